"""Partitioned ingest: the same raw data whatever the partitioning, duplicates across
partitions quarantined, and partitions that agree on column kinds and image layout."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from flows.ingest import ingest_source
from tasks.config import ConfigError, build_config
from tasks.ingest import plan_ingest


def config(path, partition_rows: int, **source):
    return build_config(
        {
            "dataset": "p",
            "source": {"path": str(path), **source},
            "model": {"code_size": 1},
            "partition_rows": partition_rows,
        }
    )


def table_folder(folder, frames: list[pd.DataFrame], row_group_size: int = 50):
    folder.mkdir()
    for i, frame in enumerate(frames):
        pq.write_table(
            pa.Table.from_pandas(frame, preserve_index=False),
            folder / f"part-{i}.parquet",
            row_group_size=row_group_size,
        )
    return folder


def sales(start: int, n: int) -> pd.DataFrame:
    rng = np.random.default_rng(start)
    return pd.DataFrame(
        {
            "order": [f"o{i}" for i in range(start, start + n)],
            "amount": rng.normal(100, 10, n),
            "city": rng.choice(["Oslo", "Bergen"], n),
        }
    )


def raw(ingested) -> pd.DataFrame:
    return pq.read_table(ingested.path).to_pandas().drop(columns="event_timestamp")


def test_parquet_partitions_give_the_same_raw_table_as_one(tmp_path, tmp_stores) -> None:
    folder = table_folder(tmp_path / "sales", [sales(0, 130), sales(130, 20), sales(150, 170)])
    many = config(folder, 100)
    plan = plan_ingest(many, tmp_stores)
    assert len(plan.parts) == 4  # 100-row ranges of 50-row groups, small files grouped
    assert [p.first_row for p in plan.parts] == [0, 100, 200, 300]
    split = ingest_source(many, tmp_stores)
    split_raw = raw(split)  # read now: both runs write the same fingerprinted folder
    whole = ingest_source(config(folder, 10_000), tmp_stores)
    assert split.rows == whole.rows == 320
    pd.testing.assert_frame_equal(split_raw, raw(whole))
    assert split_raw["entity_id"].tolist() == [str(i) for i in range(320)]  # source rows
    assert split.content_digest == whole.content_digest
    assert not list(tmp_stores.data_dir.rglob("parts-*"))  # work folders removed


def test_entity_ids_repeated_across_partitions_are_quarantined(tmp_path, tmp_stores) -> None:
    again = sales(0, 2)  # o0 and o1 once more, in the last file
    folder = table_folder(tmp_path / "sales", [sales(0, 150), sales(150, 150), again])
    ingested = ingest_source(config(folder, 100, entity_id="order"), tmp_stores)
    assert ingested.rows == 300 and ingested.quarantined == 2
    assert raw(ingested)["entity_id"].is_unique
    quarantine = pq.read_table(ingested.quarantine_path).to_pandas()
    assert quarantine["reason"].tolist() == [
        "duplicate entity id 'o0'",
        "duplicate entity id 'o1'",
    ]


def test_partitions_share_the_column_kinds_of_the_first_batch(tmp_path, tmp_stores) -> None:
    later = sales(200, 100)
    later["amount"] = later["amount"].astype(str)
    later.loc[5, "amount"] = "n/a"  # text in a column the first file made numeric
    folder = table_folder(tmp_path / "sales", [sales(0, 200), later])
    ingested = ingest_source(
        config(folder, 100, entity_id="order", max_quarantine_fraction=0.01), tmp_stores
    )
    assert ingested.rows == 299 and ingested.quarantined == 1
    assert raw(ingested)["amount"].dtype == np.float64


def test_a_file_without_a_feature_column_is_a_clear_error(tmp_path, tmp_stores) -> None:
    folder = table_folder(tmp_path / "sales", [sales(0, 100), sales(100, 100).drop(columns="city")])
    with pytest.raises(ConfigError, match=r"part-1\.parquet.*lacks column\(s\) \['city'\]"):
        ingest_source(config(folder, 100), tmp_stores)


def test_image_chunks_give_the_same_raw_table_as_one(tmp_path, tmp_stores) -> None:
    rng = np.random.default_rng(1)
    for i in range(11):
        sub = tmp_path / "imgs" / ("cat" if i % 2 else "dog")
        sub.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (6, 5), dtype=np.uint8)
        Image.fromarray(pixels, "L").save(sub / f"{i}.png")
    (tmp_path / "imgs" / "dog" / "bad.png").write_bytes(b"\x89PNG not really")
    many = config(tmp_path / "imgs", 4, max_quarantine_fraction=0.1)
    assert len(plan_ingest(many, tmp_stores).parts) == 3
    split = ingest_source(many, tmp_stores)
    split_raw = raw(split)
    whole = ingest_source(config(tmp_path / "imgs", 100, max_quarantine_fraction=0.1), tmp_stores)
    assert (split.rows, split.quarantined) == (whole.rows, whole.quarantined) == (11, 1)
    pd.testing.assert_frame_equal(split_raw, raw(whole))
    assert sorted(set(split_raw["label"])) == ["cat", "dog"]
    assert pq.read_table(split.quarantine_path).column("location").to_pylist() == ["dog/bad.png"]
