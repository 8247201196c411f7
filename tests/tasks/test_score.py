"""Which source rows a scoring run takes as new: keys the table lacks, or the append-only
fast path and its fall-back when rows arrive late."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from feature_store import feature_schema, write_features
from tasks.config import build_config
from tasks.score import find_new_rows

T0 = datetime(2026, 4, 1, tzinfo=UTC)


def scored(tmp_stores, keys: list[tuple[str, int]]) -> None:
    """Version 1 of table "t" holds rows for (id, hour) keys."""
    n = len(keys)
    cols = {
        "entity_id": [k for k, _ in keys],
        "event_timestamp": [T0 + timedelta(hours=h) for _, h in keys],
        "z_0": np.zeros(n, np.float32),
        "recon_error": np.zeros(n, np.float32),
        "is_anomaly": [False] * n,
        "model_name": ["m"] * n,
        "model_version": [1] * n,
        "run_id": ["r"] * n,
        "scored_at": [T0] * n,
    }
    schema = feature_schema(1)
    table = pa.Table.from_pydict(cols, schema=pa.schema([schema.field(c) for c in cols]))
    write_features("t", table, code_size=1, model_name="m", model_version=1, stores=tmp_stores)


def source(tmp_path, keys: list[tuple[str, int]]) -> str:
    path = tmp_path / "raw.parquet"
    pq.write_table(
        pa.table(
            {
                "entity_id": [k for k, _ in keys],
                "event_timestamp": pa.array(
                    [T0 + timedelta(hours=h) for _, h in keys], pa.timestamp("us", tz="UTC")
                ),
                "x": np.ones(len(keys)),
            }
        ),
        path,
    )
    return str(path)


def new_positions(tmp_path, tmp_stores, keys, *, timestamp=True, append_only=False):
    src = {"path": "x.csv", "entity_id": "id"}
    if timestamp:
        src.update(timestamp="t", append_only=append_only)
    cfg = build_config({"dataset": "t", "source": src})
    found = find_new_rows(source(tmp_path, keys), "t", 1, cfg, tmp_stores)
    rows = pq.read_table(found.rows).column(0).to_pylist() if found.rows else None
    return rows, found


OLD = [("a", 0), ("b", 0), ("a", 5)]


@pytest.mark.parametrize("append_only", [False, True])
def test_updates_new_entities_and_late_rows_are_new(tmp_path, tmp_stores, append_only) -> None:
    scored(tmp_stores, OLD)
    keys = [*OLD, ("a", 9), ("c", 1), ("b", 2)]  # an update, a new entity, a late row (2 < 5)
    rows, found = new_positions(tmp_path, tmp_stores, keys, append_only=append_only)
    assert rows == [3, 4, 5]
    assert found.after is None and "3 rows whose (entity id, event time) pairs" in found.how


def test_append_only_takes_the_fast_path_while_nothing_is_late(tmp_path, tmp_stores) -> None:
    scored(tmp_stores, OLD)
    keys = [*OLD, ("a", 9), ("c", 6)]
    rows, found = new_positions(tmp_path, tmp_stores, keys, append_only=True)
    assert rows is None and found.after == (T0 + timedelta(hours=5)).isoformat()
    assert found.how.startswith("rows after")


def test_without_a_timestamp_the_id_is_the_key(tmp_path, tmp_stores) -> None:
    scored(tmp_stores, OLD)
    keys = [("a", 7), ("b", 0), ("d", 0)]  # a and b known whatever their time
    rows, found = new_positions(tmp_path, tmp_stores, keys, timestamp=False)
    assert rows == [2] and "entity ids" in found.how


def test_a_version_with_no_rows_scores_everything(tmp_path, tmp_stores) -> None:
    rows, found = new_positions(tmp_path, tmp_stores, OLD)
    assert rows is None and found.after is None and "no feature table" in found.how


def test_pixels_of_another_shape_are_refused_before_scoring(tmp_path) -> None:
    """A source whose pixels come in one tensor column is checked by their count a row
    against the champion's normalizer, before anything is scored."""
    from ae_models.preprocessing.normalizer import NORMALIZER_FILE, Normalizer
    from ae_models.preprocessing.tensor_column import TensorSpec
    from tasks.config import ConfigError
    from tasks.io.parquet import with_tensor
    from tasks.score import Champion, check_source_shape
    from tasks.stages import IngestResult

    names = [f"pixel_{i}" for i in range(16)]
    path = tmp_path / "raw.parquet"
    ids = pa.array(["a", "b", "c"])
    pq.write_table(
        with_tensor({"entity_id": ids}, np.zeros((3, 16), np.uint8), TensorSpec("uint8", 16)), path
    )
    ingested = IngestResult(str(path), 3, names, False, "fp", "digest")

    def champion(name: str, trained: Normalizer) -> Champion:
        (tmp_path / name).mkdir()
        trained.save(tmp_path / name / NORMALIZER_FILE)
        return Champion("m", 1, "run", str(tmp_path / name))

    check_source_shape(ingested, champion("same", Normalizer.fit_scaled(names, 255.0)))
    smaller = champion("smaller", Normalizer.fit_scaled(names[:9], 255.0))
    with pytest.raises(ConfigError, match="holds 16 pixels a row; m v1 was trained on 9 pixels"):
        check_source_shape(ingested, smaller)
    table = champion("table", Normalizer.fit(pd.DataFrame({"age": [1.0, 2.0]})))
    with pytest.raises(ConfigError, match="trained on 1 table columns"):
        check_source_shape(ingested, table)
