"""The normalizer: fitted on training rows, [0, 1] outputs, a JSON spec that round-trips."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tasks.normalize import OTHER, Normalizer, SchemaError


@pytest.fixture
def frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "age": [20.0, 40.0, np.nan, 60.0],
            "city": ["a", "b", "a", None],
            "flag": [True, False, True, False],
        }
    )


def test_fit_transform_ranges_and_columns(frame) -> None:
    norm = Normalizer.fit(frame)
    out = norm.transform(frame)
    assert out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert norm.output_columns == [
        "age",
        "age__missing",
        "city=a",
        "city=b",
        f"city={OTHER}",
        "city=__missing__",
        "flag",
    ]
    assert out[:, 0].tolist() == [0.0, 0.5, 0.5, 1.0]  # NaN filled with the median, 40
    assert out[:, 1].tolist() == [0.0, 0.0, 1.0, 0.0]
    assert norm.output_sources["city=b"] == "city"


def test_scoring_applies_the_training_fit(frame) -> None:
    norm = Normalizer.fit(frame)
    new = pd.DataFrame({"age": [100.0], "city": ["zzz"], "flag": [True]})
    out = norm.transform(new)
    assert out[0, 0] == 1.0  # clipped to the training range
    assert out[0, norm.output_columns.index(f"city={OTHER}")] == 1.0


def test_json_spec_roundtrip(frame, tmp_path) -> None:
    norm = Normalizer.fit(frame)
    again = Normalizer.load(norm.save(tmp_path / "spec.json"))
    assert np.array_equal(norm.transform(frame), again.transform(frame))


def test_scaled_images() -> None:
    norm = Normalizer.fit_scaled(["p0", "p1"], 16.0)
    out = norm.transform(pd.DataFrame({"p0": [0, 16], "p1": [8, 4]}))
    assert out.tolist() == [[0.0, 0.5], [1.0, 0.25]]


def test_missing_column_is_named(frame) -> None:
    norm = Normalizer.fit(frame)
    with pytest.raises(SchemaError, match=r"missing 1 expected column\(s\): \['city'\]"):
        norm.transform(frame.drop(columns=["city"]))


def test_text_in_numeric_column_is_named(frame) -> None:
    norm = Normalizer.fit(frame)
    bad = frame.assign(age=["1", "x", "3", "4"])
    message = r"column 'age' has 1 non-numeric values \(first at row 1: 'x'\)"
    with pytest.raises(SchemaError, match=message):
        norm.transform(bad)


def test_all_missing_numeric_column_cannot_be_fitted() -> None:
    with pytest.raises(SchemaError, match="no finite values"):
        Normalizer.fit(pd.DataFrame({"x": [np.nan, np.nan]}))
