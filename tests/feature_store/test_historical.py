"""Point-in-time joins on a real Iceberg table: the latest features at or before each row."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from feature_store import FeatureStoreError, feature_schema, get_historical_features, write_features

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def rows(entity_ids: list[str], days: list[int], z: list[float], version: int = 1) -> pa.Table:
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
            "scored_at": [T0] * n,
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
