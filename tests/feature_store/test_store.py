"""Feature tables on a real Iceberg SQL catalog: schema checks, versions, idempotent writes."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pytest

from feature_store import feature_schema, read_features, write_features
from feature_store.store import FeatureStoreError, list_tables, load_table


def make_batch(n: int, code_size: int, version: int, start: int = 0) -> pa.Table:
    now = datetime.now(UTC)
    rng = np.random.default_rng(version)
    cols: dict[str, pa.Array] = {
        "entity_id": pa.array([str(i) for i in range(start, start + n)]),
        "event_timestamp": pa.array([now] * n, pa.timestamp("us", tz="UTC")),
    }
    for j in range(code_size):
        cols[f"z_{j}"] = pa.array(rng.normal(size=n).astype(np.float32))
    cols.update(
        recon_error=pa.array(rng.random(n).astype(np.float32)),
        is_anomaly=pa.array([False] * n),
        model_name=pa.array(["m"] * n),
        model_version=pa.array([version] * n, pa.int64()),
        run_id=pa.array(["run"] * n),
        scored_at=pa.array([now] * n, pa.timestamp("us", tz="UTC")),
    )
    return pa.Table.from_pydict(cols, schema=feature_schema(code_size))


def write(stores, table: pa.Table, code_size: int, version: int) -> int:
    return write_features(
        "t", table, code_size=code_size, model_name="m", model_version=version, stores=stores
    )


def test_write_and_read_versions(tmp_stores) -> None:
    assert write(tmp_stores, make_batch(5, 3, 1), 3, 1) == 5
    assert write(tmp_stores, make_batch(7, 3, 2), 3, 2) == 7
    assert list_tables(tmp_stores) == ["t"]
    v1 = read_features("t", 1, home=tmp_stores)
    v2 = read_features("t", "2", home=tmp_stores)
    both = read_features("t", None, home=tmp_stores)
    assert len(v1) == 5 and len(v2) == 7 and len(both) == 12
    assert set(v1["model_version"]) == {1}
    assert v1["z_0"].dtype == np.float32


def test_rewriting_a_version_replaces_it(tmp_stores) -> None:
    write(tmp_stores, make_batch(5, 3, 1), 3, 1)
    write(tmp_stores, make_batch(4, 3, 1), 3, 1)
    got = read_features("t", 1, home=tmp_stores)
    assert len(got) == 4 and not got["entity_id"].duplicated().any()


def test_versions_with_another_code_size_share_the_table(tmp_stores) -> None:
    write(tmp_stores, make_batch(3, 2, 1), 2, 1)
    write(tmp_stores, make_batch(3, 4, 2), 4, 2)
    v1 = read_features("t", 1, home=tmp_stores)
    v2 = read_features("t", 2, home=tmp_stores)
    assert [c for c in v1.columns if c.startswith("z_")] == ["z_0", "z_1"]
    assert [c for c in v2.columns if c.startswith("z_")] == ["z_0", "z_1", "z_2", "z_3"]


def test_each_write_is_one_snapshot_partitioned_by_version(tmp_stores) -> None:
    write(tmp_stores, make_batch(5, 3, 1), 3, 1)
    tbl = load_table("t", tmp_stores)
    first = tbl.current_snapshot().snapshot_id
    write(tmp_stores, make_batch(5, 3, 2), 3, 2)
    tbl = load_table("t", tmp_stores)
    assert tbl.current_snapshot().parent_snapshot_id == first
    assert [f.name for f in tbl.spec().fields] == ["model_name", "model_version"]


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda t: t.drop_columns(["recon_error"]), "lacks column 'recon_error'"),
        (
            lambda t: t.set_column(2, "z_0", pa.array([np.nan] * 3, pa.float32())),
            "'z_0' holds NaN",
        ),
        (
            lambda t: t.set_column(
                t.schema.get_field_index("model_version"),
                "model_version",
                pa.array([9] * 3, pa.int64()),
            ),
            "holds \\[9\\], expected only 1",
        ),
    ],
)
def test_invalid_batches_are_refused_before_writing(tmp_stores, mutate, message) -> None:
    with pytest.raises(ValueError, match=message):
        write(tmp_stores, mutate(make_batch(3, 2, 1)), 2, 1)
    assert not (tmp_stores.home / "catalog.db").exists()


def test_reading_what_is_not_there(tmp_stores) -> None:
    with pytest.raises(FeatureStoreError, match="no feature store at"):
        read_features("t", 1, home=tmp_stores)
    write(tmp_stores, make_batch(3, 2, 1), 2, 1)
    with pytest.raises(FeatureStoreError, match=r"no feature table 'x'; tables: \['t'\]"):
        read_features("x", 1, home=tmp_stores)
    with pytest.raises(FeatureStoreError, match="no rows for model version 5"):
        read_features("t", 5, home=tmp_stores)
