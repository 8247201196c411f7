"""Disks that fill (issue 22.3): a store on a small filesystem (a size-limited tmpfs the test
mounts; skipped with the reason where mounting is refused) fails the run with one line naming
the store and the space needed, and the table and the registry stay as they were."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pytest

from feature_store import load_table, read_features
from feature_store.schema import feature_batch, feature_schema
from feature_store.write import stage_features
from flows.reduce_features import reduce_features
from stores import resolve_stores
from stores.space import StoreFull
from tasks.config import build_config
from tests.services import small_filesystem

pytestmark = pytest.mark.slow


def _config(home, seed: int = 1):
    return build_config(
        {
            "home": str(home),
            "model": {"code_size": 4},
            "train": {"epochs": 2, "lr": 3e-3, "patience": 0, "seed": seed},
        }
    )


def _fill(folder, leave: int) -> None:
    """Write a file that leaves ``leave`` bytes free on ``folder``'s filesystem."""
    free = shutil.disk_usage(folder).free
    with (folder / "filler").open("wb") as fh:
        fh.write(b"\1" * max(0, free - leave))


def test_a_full_warehouse_is_named_before_training_and_nothing_changes(
    prefect_server, home, tmp_path, monkeypatch
) -> None:
    import mlflow

    with small_filesystem(tmp_path / "warehouse", "4m") as warehouse:
        monkeypatch.setenv("AEPIPE_WAREHOUSE", warehouse.as_uri())
        assert reduce_features(_config(home)).rows_written == 1797
        st = resolve_stores(home)
        snapshot = load_table("digits", st).current_snapshot().snapshot_id
        files = sorted(p for p in warehouse.rglob("*"))
        _fill(warehouse, 100_000)

        with pytest.raises(StoreFull) as err:
            reduce_features(_config(home, seed=2))
        message = str(err.value)
        assert message.startswith(f"no room in the warehouse store {warehouse}: writing 1797")
        assert "needs about" in message and "KB free" in message
        assert "AEPIPE_WAREHOUSE" in message and "\n" not in message

        (warehouse / "filler").unlink()
        assert sorted(p for p in warehouse.rglob("*")) == files  # nothing written
        assert load_table("digits", st).current_snapshot().snapshot_id == snapshot
        assert set(read_features("digits", home=home)["model_version"]) == {1}
        client = mlflow.MlflowClient(st.tracking_uri, st.tracking_uri)
        versions = client.search_model_versions("name='aepipe-digits'")
        assert [int(v.version) for v in versions] == [1]
        experiment = client.get_experiment_by_name("aepipe-digits").experiment_id
        assert len(client.search_runs([experiment])) == 1  # refused before a training run


def test_a_data_folder_too_small_to_ingest_is_one_line_and_writes_nothing(
    prefect_server, aepipe_main, tmp_path
) -> None:
    home = tmp_path / ".aepipe"
    with small_filesystem(home / "data", "256k") as data:
        done = aepipe_main("run", "--source", "digits", "--epochs", "2", cwd=tmp_path)
        assert done.returncode == 2, done.stderr[-2000:]
        (line,) = done.stderr.strip().splitlines()
        assert line.startswith(f"aepipe: error: no room in the data store {data}: ingesting")
        assert "needs about 2.3 MB" in line and "KB free" in line, line
        assert list(data.iterdir()) == []  # the partitions' work folder went too
    assert not (home / "catalog.db").exists() and not (home / "models").exists()


def test_a_disk_that_fills_mid_write_keeps_nothing_and_names_the_warehouse(
    tmp_path, monkeypatch
) -> None:
    """The check passed (or could not know the rows), then the disk filled: the write stops
    with the store named and its data files removed; the table has no snapshot."""
    with small_filesystem(tmp_path / "warehouse", "1m") as warehouse:
        monkeypatch.setenv("AEPIPE_WAREHOUSE", warehouse.as_uri())
        st = resolve_stores(tmp_path / "home")
        rng = np.random.default_rng(0)
        schema = feature_schema(32)

        def batches():  # about 11 MB of random codes, the rows unknown up front
            for start in range(0, 80_000, 10_000):
                ids = pa.array([f"e{i}" for i in range(start, start + 10_000)])
                codes = rng.normal(size=(10_000, 32)).astype(np.float32)
                times = pa.array(np.full(10_000, 0, "datetime64[us]"))
                yield feature_batch(
                    schema,
                    ids,
                    times,
                    {
                        **{f"z_{j}": codes[:, j] for j in range(32)},
                        "recon_error": np.abs(codes[:, 0]),
                        "anomaly_score": np.abs(codes[:, 1]),
                        "is_anomaly": codes[:, 2] > 2,
                    },
                    model_name="m",
                    model_version=1,
                    run_id="r",
                    scored_at=datetime(2026, 12, 1, tzinfo=UTC),
                )

        with pytest.raises(StoreFull, match="filled during the write; nothing of it was kept"):
            stage_features(
                "big", batches(), code_size=32, model_name="m", model_version=1, stores=st
            )
        assert not list(warehouse.rglob("*.parquet"))  # the partial data files are gone
        assert load_table("big", st).current_snapshot() is None
