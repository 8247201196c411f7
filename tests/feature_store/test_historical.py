"""Point-in-time joins on a real Iceberg table: the latest features at or before each row."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from feature_store import FeatureStoreError, feature_schema, get_historical_features, write_features

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def rows(
    entity_ids: list[str],
    days: list[int],
    z: list[float],
    version: int = 1,
    scored_days: list[int] | None = None,
) -> pa.Table:
    n = len(entity_ids)
    return pa.Table.from_pydict(
        {
            "entity_id": entity_ids,
            "event_timestamp": [T0 + timedelta(days=d) for d in days],
            "z_0": np.array(z, np.float32),
            "recon_error": np.array(z, np.float32) / 10,
            "anomaly_score": [None] * n,  # optional columns may be null
            "is_anomaly": [False] * n,
            "top_columns": [None] * n,
            "model_name": ["m"] * n,
            "model_version": [version] * n,
            "run_id": ["r"] * n,
            "scored_at": [T0 + timedelta(days=d) for d in scored_days or [0] * n],
        },
        schema=feature_schema(1),
    )


@pytest.fixture
def table(tmp_stores):
    # entity a scored on days 0, 10 and 20; entity b on day 5
    write_features(
        "h",
        rows(["a", "a", "a", "b"], [0, 10, 20, 5], [1.0, 2.0, 3.0, 9.0]),
        code_size=1,
        model_name="m",
        model_version=1,
        stores=tmp_stores,
    )
    return tmp_stores


def test_each_row_gets_the_latest_features_at_or_before_its_time(table) -> None:
    entities = pd.DataFrame(
        {
            "entity_id": ["a", "a", "a", "b", "b", "c"],
            "event_timestamp": [T0 + timedelta(days=d) for d in (15, 10, -1, 30, 4, 1)],
            "label": [1, 0, 1, 0, 1, 0],
        },
        index=list("uvwxyz"),
    )
    out = get_historical_features(entities, "h", 1, home=table)
    assert list(out.index) == list("uvwxyz")
    assert list(out["label"]) == [1, 0, 1, 0, 1, 0]
    z = out["z_0"].tolist()
    assert z[:2] == [2.0, 2.0]  # day 15 -> day 10's row; day 10 exactly -> day 10's row
    assert np.isnan(z[2]) and np.isnan(z[4]) and np.isnan(z[5])  # nothing before, or unknown
    assert z[3] == 9.0
    assert out.loc["u", "feature_timestamp"] == pd.Timestamp(T0 + timedelta(days=10))
    assert out.loc["u", "recon_error"] == pytest.approx(0.2)


def test_ttl_naive_times_int_keys_and_selected_features(table) -> None:
    entities = pd.DataFrame(
        {"id": ["a", "a"], "when": [datetime(2026, 1, 12), datetime(2026, 1, 25)]}
    )
    out = get_historical_features(
        entities,
        "h",
        1,
        entity_key="id",
        timestamp_column="when",
        features=["z_0"],
        ttl=timedelta(days=3),
        home=table,
    )
    assert list(out.columns) == ["id", "when", "z_0", "feature_timestamp"]
    assert out["z_0"].iloc[0] == 2.0  # day 11: day 10's row is within the 3-day ttl
    assert np.isnan(out["z_0"].iloc[1])  # day 24: day 20 is older than the ttl


def test_bad_entity_frames_are_refused(table) -> None:
    with pytest.raises(FeatureStoreError, match="no column 'event_timestamp'"):
        get_historical_features(pd.DataFrame({"entity_id": ["a"]}), "h", 1, home=table)
    bad_time = pd.DataFrame({"entity_id": ["a"], "event_timestamp": ["not a time"]})
    with pytest.raises(FeatureStoreError, match="cannot be read as timestamps"):
        get_historical_features(bad_time, "h", 1, home=table)
    clash = pd.DataFrame({"entity_id": ["a"], "event_timestamp": [T0], "z_0": [1.0]})
    with pytest.raises(FeatureStoreError, match="already has column"):
        get_historical_features(clash, "h", 1, home=table)


def test_versions_of_an_entity_latest_and_ties_by_scored_at(table) -> None:
    """a: versions on days 0, 10, 20; b: day 5. A second row for a's day 10, scored later (a
    rescoring), wins over the first in a point-in-time join and a latest read; a second row
    for b's day 5, scored earlier, does not."""
    from feature_store import read_features, write_features

    write_features(
        "h",
        rows(["a", "b"], [10, 5], [7.0, 8.0], scored_days=[30, -1]),
        code_size=1,
        model_name="m",
        model_version=1,
        stores=table,
        mode="append",
    )
    entities = pd.DataFrame(
        {"entity_id": ["a", "b"], "event_timestamp": [T0 + timedelta(days=12)] * 2}
    )
    out = get_historical_features(entities, "h", 1, home=table)
    # the later scored of two rows with one time, whichever was written first
    assert out["z_0"].tolist() == [7.0, 9.0]
    latest = read_features("h", 1, latest=True, home=table).set_index("entity_id")
    assert sorted(latest.index) == ["a", "b"]
    assert latest.loc["a", "z_0"] == 3.0  # day 20: the newest event time
    assert latest.loc["b", "z_0"] == 9.0  # day 5 twice: the later scored, written first
    picked = read_features("h", 1, latest=True, columns=["entity_id", "z_0"], home=table)
    assert list(picked.columns) == ["entity_id", "z_0"] and len(picked) == 2
