"""The normalizer: fitted on training rows, [0, 1] outputs, a JSON spec that round-trips."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ae_models.preprocessing.normalizer import (
    OTHER,
    OUTPUT_LIMIT,
    ExtraColumnsWarning,
    Normalizer,
    SchemaError,
)


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
    new = pd.DataFrame({"age": [100.0, -1e308, np.inf], "city": ["zzz"] * 3, "flag": [True] * 3})
    out = norm.transform(new)
    # ages 20..60: 100 lies a whole range beyond the top, not piled up at 1 with the top
    # itself (the anomaly score must see how far); a value beyond float32 stays finite
    assert out[0, 0] == 2.0 and out[1, 0] == -OUTPUT_LIMIT and np.isfinite(out).all()
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


def test_scalers_and_log1p() -> None:
    frame = pd.DataFrame({"a": [1.0, 2.0, 3.0, 4.0, 100.0], "b": [0.0, 10.0, 100.0, 1e3, 1e4]})
    std = Normalizer.fit(frame, scaling="standard")
    out = std.transform(frame)
    assert np.allclose(out.mean(axis=0), 0, atol=1e-6) and np.allclose(
        out.std(axis=0), 1, atol=1e-5
    )
    assert not std.unit_range
    robust = Normalizer.fit(frame, per_column={"a": "robust"})
    a = robust.transform(frame)[:, 0]
    assert a[2] == 0.0 and a[3] == 0.5  # (x - median 3) / IQR 2
    assert robust.output_columns == ["a", "b"] and not robust.unit_range
    logged = Normalizer.fit(frame, log1p=["b"])
    b = logged.transform(frame)[:, 1]
    assert logged.unit_range and b[0] == 0.0 and b[-1] == 1.0
    assert abs(b[2] - np.log1p(100) / np.log1p(1e4)) < 1e-6  # log scale, then min-max
    with pytest.raises(SchemaError, match="unknown scaling 'zscore' for column 'a'"):
        Normalizer.fit(frame, per_column={"a": "zscore"})


def test_extra_columns_are_ignored_with_a_warning(frame) -> None:
    norm = Normalizer.fit(frame)
    extended = frame.assign(new=1, entity_id="x")
    with pytest.warns(ExtraColumnsWarning, match=r"ignoring 1 column\(s\).*\['new'\]"):
        out = norm.transform(extended, known=("entity_id",))
    assert np.array_equal(out, norm.transform(frame))


def test_spec_roundtrip_keeps_scalers(tmp_path) -> None:
    frame = pd.DataFrame({"a": [1.0, 5.0, 9.0], "b": [1.0, 10.0, 100.0]})
    norm = Normalizer.fit(frame, scaling="robust", log1p=["b"])
    again = Normalizer.load(norm.save(tmp_path / "s.json"))
    assert np.array_equal(norm.transform(frame), again.transform(frame))


# -- properties ---------------------------------------------------------------------------

finite = st.floats(allow_nan=False, allow_infinity=False)  # up to +-1.8e308
cell_values = st.one_of(finite, st.none())
words = st.one_of(st.sampled_from(["a", "b", "c", "dé", ""]), st.none())


@st.composite
def tables(draw) -> pd.DataFrame:
    rows = draw(st.integers(min_value=1, max_value=30))
    columns = {}
    for i in range(draw(st.integers(min_value=1, max_value=4))):
        kind = draw(st.sampled_from(["num", "cat", "bool"]))
        if kind == "num":
            values = draw(st.lists(cell_values, min_size=rows, max_size=rows))
            if all(v is None for v in values):
                values[0] = 0.0
            columns[f"n{i}"] = pd.array(values, dtype="Float64")
        elif kind == "cat":
            columns[f"c{i}"] = draw(st.lists(words, min_size=rows, max_size=rows))
        else:
            columns[f"b{i}"] = draw(st.lists(st.booleans(), min_size=rows, max_size=rows))
    return pd.DataFrame(columns)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tables(), st.sampled_from(["minmax", "standard", "robust"]))
def test_any_finite_table_normalizes_to_finite_values(table, scaling) -> None:
    norm = Normalizer.fit(table, scaling=scaling)
    out = norm.transform(table)
    assert out.shape == (len(table), len(norm.output_columns))
    assert np.isfinite(out).all()
    if scaling == "minmax":
        assert out.min(initial=0) >= 0 and out.max(initial=0) <= 1
    again = Normalizer.from_dict(norm.to_dict()).transform(table)
    assert np.array_equal(out, again)  # the same spec gives the same output
    # raw Parquet batches take the Arrow path: the same numbers
    assert np.array_equal(norm.transform_arrow(pa.Table.from_pandas(table)), out)


@settings(max_examples=40, deadline=None)
@given(tables(), st.lists(st.text(max_size=5), min_size=1, max_size=5))
def test_unseen_categories_never_fail(table, unseen) -> None:
    norm = Normalizer.fit(table)
    new = table.head(1).copy()
    for col in new.columns:
        if col.startswith("c"):
            new[col] = unseen[0]
    out = norm.transform(new)
    assert np.isfinite(out).all() and out.shape[0] == 1
    assert np.array_equal(norm.transform_arrow(pa.Table.from_pandas(new)), out)


@pytest.mark.parametrize("scaling", ["standard", "robust"])
def test_a_tiny_spread_does_not_overflow(scaling) -> None:
    # found by the property test: the IQR of these is 2.4e-228, and -1 / IQR overflowed
    table = pd.DataFrame({"n0": [0.0, 0.0, 0.0, -1.0, -2.4221231142907423e-228]})
    out = Normalizer.fit(table, scaling=scaling).transform(table)
    assert np.isfinite(out).all() and np.abs(out).max() <= 1e6


@pytest.mark.parametrize("scaling", ["minmax", "standard", "robust"])
def test_values_near_the_float_limit_stay_finite(scaling) -> None:
    # min-max spans and standard deviations of such values overflowed to inf / NaN outputs
    table = pd.DataFrame({"n0": [1.0, 2.0, 1e308, -1e308, 3.0]})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow warnings either
        out = Normalizer.fit(table, scaling=scaling).transform(table)
    assert np.isfinite(out).all() and np.abs(out).max() <= 1e6
    assert out[2, 0] > out[0, 0] > out[3, 0]  # order kept
