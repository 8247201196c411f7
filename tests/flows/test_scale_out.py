"""Partitioned ingest and writes: the Dask task runner gives the same data and table as
threads; a failed partition leaves nothing behind."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ae_models.preprocessing.tensor_column import FEATURES, TensorSpec, batch_matrix, tensor_array
from feature_store import load_table, read_features
from flows.partitions import write_partitions
from flows.reduce_features import reduce_features
from stores import resolve_stores
from tasks.config import build_config
from tasks.ingest import plan_ingest
from tasks.scoring_job import ModelRef, ScoringJob, new_job

pytestmark = pytest.mark.slow


def config(home, runner: str, source: dict | None = None):
    return build_config(
        {
            "home": str(home),
            "dataset": "digits",
            "source": source or {"path": "digits"},
            "model": {"code_size": 4},
            "train": {"epochs": 3, "lr": 3e-3, "patience": 0},  # learns: champion
            "partition_rows": 400,
            "task_runner": runner,
        }
    )


@pytest.fixture
def small_row_groups(monkeypatch):
    """Normalized Parquet in row groups of 400 rows, so the digits split into 5 partitions."""
    monkeypatch.setattr("tasks.normalize.NORMALIZE_BATCH", 400)


def digits_folder(folder) -> dict:
    """The digits as three Parquet files in row groups of 200 rows: five ingest partitions."""
    from sklearn.datasets import load_digits

    frame = load_digits(as_frame=True).frame
    folder.mkdir()
    for i, start in enumerate((0, 600, 1200)):
        part = frame.iloc[start : start + 600]
        pq.write_table(
            pa.Table.from_pandas(part, preserve_index=False),
            folder / f"digits-{i}.parquet",
            row_group_size=200,
        )
    return {"path": str(folder), "label": "target"}


def test_dask_runner_writes_the_same_table_as_threads(
    prefect_server, small_row_groups, tmp_path
) -> None:
    source = digits_folder(tmp_path / "source")
    assert (
        len(plan_ingest(config(tmp_path, "threads", source), resolve_stores(tmp_path)).parts) == 5
    )
    threads = reduce_features(config(tmp_path / "threads", "threads", source))
    dask = reduce_features(config(tmp_path / "dask", "dask", source))
    assert threads.rows_written == dask.rows_written == 1797
    raw = [
        pq.read_table(next((tmp_path / h / "data").rglob("raw.parquet"))).drop(["event_timestamp"])
        for h in ("threads", "dask")
    ]
    assert raw[0].equals(raw[1])  # ingested in five partitions on either runner
    a = read_features("digits", home=tmp_path / "threads").sort_values("entity_id")
    b = read_features("digits", home=tmp_path / "dask").sort_values("entity_id")
    assert list(a["entity_id"]) == list(b["entity_id"])
    cols = [c for c in a.columns if c.startswith("z_")] + ["recon_error"]
    np.testing.assert_allclose(a[cols].to_numpy(), b[cols].to_numpy(), rtol=1e-5, atol=1e-6)
    assert (a["is_anomaly"].to_numpy() == b["is_anomaly"].to_numpy()).all()
    snap = load_table("digits", resolve_stores(tmp_path / "dask")).current_snapshot()
    assert snap.summary["aepipe.partitions"] == "5"  # five tasks, one commit


def test_a_failed_partition_commits_nothing_and_leaves_no_files(
    prefect_server, small_row_groups, tmp_path, monkeypatch
) -> None:
    home = tmp_path / "home"
    reduce_features(config(home, "threads"))
    st = resolve_stores(home)
    table = load_table("digits", st)
    before = table.current_snapshot().snapshot_id
    files = set((home / "warehouse").rglob("*.parquet"))
    source = next((home / "data" / "digits").glob("*/normalized.parquet"))
    broken = tmp_path / "broken.parquet"
    schema = pq.read_schema(source)
    index = schema.get_field_index(FEATURES)
    schema = schema.set(index, TensorSpec("float32", 64).field())  # pixels as float32
    with pq.ParquetWriter(broken, schema) as writer:
        for i in range(3):
            part = pq.ParquetFile(source).read_row_group(i)
            values = batch_matrix(part).copy()
            if i == 1:  # a NaN input gives a NaN code, which the schema check refuses
                values[0, 0] = np.nan
            part = part.set_column(index, schema.field(index), tensor_array(values))
            writer.write_table(part)
    job = ScoringJob(
        table="digits",
        source=str(broken),
        model_dir=str(next((home / "models" / "digits").glob("*-*[0-9a-f]"))),
        model_name="aepipe-digits",
        model_version=1,
        run_id="r",
        stores=st,
        mode="replace",
        features=[f"pixel_{r}_{c}" for r in range(8) for c in range(8)],
        partition_rows=400,
    )
    with pytest.raises(ValueError, match="NaN"):
        write_partitions(job)
    assert load_table("digits", st).current_snapshot().snapshot_id == before
    assert set((home / "warehouse").rglob("*.parquet")) == files
    assert len(read_features("digits", home=home)) == 1797

    # issue 43.3: monitoring is its own task after the commit; when it fails (the drift
    # table unreachable, say), the run fails but the commit stands, made once
    import tasks.monitor
    import tasks.write_features

    commits = []

    def counted(*args, **kwargs):
        commits.append(1)
        return commit_features(*args, **kwargs)

    def unreachable(*args, **kwargs):
        raise OSError("the drift table's catalog went away")

    commit_features = tasks.write_features.commit_features
    monkeypatch.setattr(tasks.write_features, "commit_features", counted)
    monkeypatch.setattr(tasks.monitor, "record_drift", unreachable)
    ref = ModelRef("aepipe-digits", 1, "r", job.model_dir)
    monitored = new_job(
        ref, config(home, "threads"), st, source=str(source), mode="replace", device="cpu",
        features=job.features,
    )  # fmt: skip
    assert monitored.drift_reference is not None  # read once, from the model's model.json
    with pytest.raises(OSError, match="drift table's catalog went away"):
        write_partitions(monitored)
    assert commits == [1]
    assert load_table("digits", st).current_snapshot().snapshot_id != before
    assert len(read_features("digits", home=home)) == 1797


def test_a_data_store_folder_holds_data_models_and_cached_results(
    prefect_server, tmp_path, monkeypatch
) -> None:
    """Issue 20.1: ``AEPIPE_DATA`` a folder of its own (a shared mount, say): ingested and
    normalized Parquet, checkpoints, model folders and Prefect's cached results go there, not
    under the home; a second home on the same folder reuses the cached ingest."""
    from tests.flows.test_score_features import task_states

    shared = tmp_path / "shared"
    monkeypatch.setenv("AEPIPE_DATA", str(shared))
    one, two = tmp_path / "one", tmp_path / "two"
    reduce_features(config(one, "threads"))
    assert list((shared / "data" / "digits").glob("*/normalized.parquet"))
    assert list((shared / "models" / "digits").glob("checkpoints/*/checkpoint.pt"))
    assert any((shared / "results").iterdir())  # Prefect's cached results
    assert not (one / "data").exists() and not (one / "models").exists()

    state = reduce_features(config(two, "threads"), return_state=True)
    assert state.is_completed()
    ingest = task_states(state.state_details.flow_run_id, "ingest-partitions")
    assert ingest["merge-ingest"] == "Cached"  # the other home's ingest, from the shared folder
    assert task_states(state.state_details.flow_run_id)["normalize"] == "Cached"


def test_a_subflow_runs_without_a_heartbeat_of_its_own(prefect_server) -> None:
    """A nested flow run (the partitioned ingest and write) sends no heartbeat of its own:
    Prefect joins a heartbeat thread that sleeps in one-second steps when a flow ends, a
    second or more per subflow; the parent keeps its heartbeat, and its tasks still run on
    the task runner the config asks for."""
    from prefect import flow, task
    from prefect.settings import (
        PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
        get_current_settings,
        temporary_settings,
    )

    from tasks.runners import run_subflow

    @task
    def setting(_: int) -> int | None:
        return get_current_settings().flows.heartbeat_frequency

    @flow
    def child() -> list[int | None]:
        return [f.result() for f in setting.map([1, 2])] + [setting.fn(0)]

    @flow
    def parent() -> tuple[int | None, list[int | None], int | None]:
        before = get_current_settings().flows.heartbeat_frequency
        inside = run_subflow(child, config("unused", "threads"))
        return before, inside, get_current_settings().flows.heartbeat_frequency

    # the session's test server runs without heartbeats (tests/conftest.py): give this parent one
    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: 180}):
        before, inside, after = parent()
    assert before == after == 180
    assert inside == [None, None, None]
