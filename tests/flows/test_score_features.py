"""Scheduled scoring end to end: new rows only, through the champion, appended; then nothing."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from feature_store import get_historical_features, load_table, read_features
from flows.reduce_features import reduce_features
from flows.score_features import score_features
from tasks.config import ConfigError, build_config

pytestmark = pytest.mark.slow
T0 = datetime(2026, 3, 1, tzinfo=UTC)


def sales(n: int, start: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "order_id": [f"o{i}" for i in range(start, start + n)],
            "ts": [(T0 + timedelta(hours=i)).isoformat() for i in range(start, start + n)],
            "amount": rng.gamma(2.0, 20.0, n).round(2),
            "items": rng.integers(1, 9, n),
            "discount": rng.random(n).round(3),
            "region": rng.choice(["north", "south", "east", "west"], n),
        }
    )


def config(home, source, **source_roles):
    return build_config(
        {
            "home": str(home),
            "dataset": "sales",
            "source": {"path": str(source), **source_roles},
            "model": {"code_size": 3},
            "train": {"epochs": 5, "lr": 3e-3, "patience": 0},  # learns: champion
        }
    )


def task_states(flow_run_id, subflow: str | None = None) -> dict[str, str]:
    """Task name -> final state name, for one flow run (or its subflow named ``subflow``),
    from the Prefect API."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterId,
        FlowRunFilterParentTaskRunId,
    )

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
        if subflow is not None:
            parent = next(r.id for r in runs if r.name.rsplit("-", 1)[0] == subflow)
            child = client.read_flow_runs(
                flow_run_filter=FlowRunFilter(
                    parent_task_run_id=FlowRunFilterParentTaskRunId(any_=[parent])
                )
            )[0]
            runs = client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[child.id]))
            )
    return {r.name.rsplit("-", 1)[0]: r.state.name for r in runs}


def progress_shown() -> float:
    """The latest scoring progress artifact's value."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterType

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(type=ArtifactFilterType(any_=["progress"]))
        )
    ours = sorted(
        (a for a in found if a.description == "Partitions scored"), key=lambda a: a.created
    )
    return float(ours[-1].data)


def scored_ingest(home) -> str:
    """The raw file of the ingest the last scoring run read (its note's fingerprint)."""
    import json

    note = json.loads((home / "data" / "sales" / "last-score.json").read_text())
    return str(home / "data" / "sales" / note["fingerprint"] / "raw.parquet")


def snapshot(home) -> int:
    from stores import resolve_stores

    return load_table("sales", resolve_stores(home)).current_snapshot().snapshot_id


def test_new_parquet_files_are_scored_by_event_time_once(prefect_server, home, tmp_path) -> None:
    folder = tmp_path / "sales"
    folder.mkdir()
    sales(300, 0, 1).to_parquet(folder / "2026-03-01.parquet")
    cfg = config(home, folder, entity_id="order_id", timestamp="ts")
    trained = reduce_features(cfg)
    before = snapshot(home)

    raw = next((home / "data" / "sales").glob("*/raw.parquet"))
    written_at = raw.stat().st_mtime_ns
    state = score_features(cfg, return_state=True)
    nothing = state.result()
    run_id = state.state_details.flow_run_id
    assert task_states(run_id) == {
        "load-champion": "Completed",
        "ingest-partitions": "Completed",  # the subflows that map partition tasks
        "prepare-scoring": "Completed",
        "write-partitions": "Completed",
    }
    assert task_states(run_id, "ingest-partitions") == {
        "plan-ingest": "Completed",
        "ingest-partition": "Cached",  # the unchanged source was not read again
        "merge-ingest": "Cached",
    }
    assert raw.stat().st_mtime_ns == written_at
    assert nothing.rows_written == 0 and nothing.rows_seen == 300
    shutil.rmtree(home / "data")  # a cached result whose files are gone is not trusted
    state = score_features(cfg, return_state=True)
    ingest_states = task_states(state.state_details.flow_run_id, "ingest-partitions")
    assert ingest_states["merge-ingest"] == ingest_states["ingest-partition"] == "Completed"
    assert raw.exists() and state.result().rows_written == 0
    assert "no new rows" in nothing.to_text() and "0 rows whose" in nothing.selection
    assert snapshot(home) == before

    sales(40, 300, 2).to_parquet(folder / "2026-03-14.parquet")
    scored = score_features(cfg)
    # issue 42: only the file newer than the last commit's marker is read, then compared
    assert (scored.rows_seen, scored.rows_written) == (40, 40)
    assert scored.selection.startswith("40 rows read past ")
    assert scored.model_version == trained.model_version
    table = read_features("sales", home=home)
    assert len(table) == 340 and table["entity_id"].is_unique
    new = table[table["entity_id"].isin([f"o{i}" for i in range(300, 340)])]
    assert len(new) == 40 and np.isfinite(new["recon_error"]).all()
    # tables name the 3 source columns contributing most to each row's score
    sources = {"amount", "items", "discount", "region"}
    assert all(len(t) == 3 and set(t) <= sources for t in new["top_columns"])
    assert new["anomaly_score"].between(0, 1).all()
    assert new["event_timestamp"].min() == pd.Timestamp(T0 + timedelta(hours=300))

    state = score_features(cfg, return_state=True)
    again = state.result()
    assert again.rows_written == 0 and snapshot(home) == scored.snapshot_id
    # issue 40.4: nothing new since the last run's note: no ingest, no table scan
    assert task_states(state.state_details.flow_run_id) == {"load-champion": "Completed"}
    assert "unchanged since the scoring run" in again.selection
    assert progress_shown() == 100.0  # the Prefect UI showed the scoring progress

    # a downstream reader joins labels to the features as they were at each moment
    entities = pd.DataFrame(
        {"entity_id": ["o5", "o320"], "event_timestamp": [T0 + timedelta(days=30)] * 2}
    )
    joined = get_historical_features(entities, "sales", home=home)
    assert joined["z_0"].notna().all()


def test_without_timestamps_new_rows_are_new_entity_ids(
    prefect_server, home, tmp_path, aepipe_main, monkeypatch
) -> None:
    import yaml

    import flows.score_features
    from feature_store import record_aliases
    from stores import resolve_stores
    from tasks.scored import unchanged_scoring

    path = tmp_path / "orders.csv"
    sales(200, 0, 3).drop(columns=["order_id", "ts"]).to_csv(path, index=False)
    cfg = config(home, path)
    reduce_features(cfg)
    assert score_features(cfg).rows_written == 0

    # issue 40.4: the next run with nothing new is answered from the last run's note, before
    # MLflow or a Prefect server is started ...
    settings = tmp_path / "orders.yaml"
    settings.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    flow_started = []
    monkeypatch.setattr(flows.score_features, "score_features", flow_started.append)
    quick = aepipe_main("score", str(settings), cwd=tmp_path)
    assert quick.returncode == 0 and not flow_started, quick.stderr
    assert "no new rows in the source (200 rows, all scored already: the source is " in quick.stdout
    assert "unchanged since the scoring run of" in quick.stdout
    monkeypatch.undo()
    # ... and only while settings, champion and table are as that run left them
    st = resolve_stores(home)
    assert unchanged_scoring(cfg, st) is not None
    assert unchanged_scoring(cfg.model_copy(update={"partition_rows": 7}), st) is None
    record_aliases(cfg.model_name, {"champion": 2}, st)  # a champion that has not scored it
    assert unchanged_scoring(cfg, st) is None
    assert unchanged_scoring(cfg, st, version=1) is not None  # the registry's, when asked
    record_aliases(cfg.model_name, {"champion": 1}, st)
    # a catalog that does not answer: no quick answer, the whole flow's checks name it
    dead = st.model_copy(update={"catalog_uri": "postgresql+psycopg2://u@127.0.0.1:9/x"})
    assert unchanged_scoring(cfg, dead) is None
    more = pd.concat([sales(200, 0, 3), sales(25, 200, 4)]).drop(columns=["order_id", "ts"])
    more.to_csv(path, index=False)
    with path.open("a") as fh:  # one ragged line among the new ones: set aside, and said so
        fh.write("7\n")
    scored = score_features(cfg)
    assert (scored.rows_seen, scored.rows_written) == (225, 25)
    # issue 40.3: the score report says what the ingest set aside, as `aepipe run`'s does
    assert scored.quarantine_note.startswith(" (+1 quarantined: 1 x expected N fields, got N")
    assert f"225 source rows{scored.quarantine_note} into" in scored.to_text()
    # issue 40.2: the ingest of the source as it was (training's, first scoring's) went once
    # the commit landed; this run's own stays for the next run, and no lease is left behind
    ingests = [p for p in (home / "data" / "sales").iterdir() if p.is_dir() and p.name != "scoring"]
    assert ingests == [Path(scored_ingest(home)).parent]
    assert not list(ingests[0].glob(".lease-*"))
    assert "data store: removed 1 superseded ingest(s)" in scored.to_text()
    ids = read_features("sales", home=home)["entity_id"]
    assert sorted(ids, key=int) == [str(i) for i in range(225)]

    # the most eager upkeep (nothing kept for its age) leaves what the champion and the
    # table need: the next day's rows still score, every row still reads
    from datetime import timedelta as span

    from stores.upkeep import maintain_data

    swept = maintain_data(st, retain=span(0), orphan_age=span(0))
    assert swept.removed and (home / "models" / "aepipe-sales" / "1").is_dir()
    pd.concat([more, sales(5, 225, 6).drop(columns=["order_id", "ts"])]).to_csv(path, index=False)
    assert score_features(cfg).rows_written == 5
    assert len(read_features("sales", home=home)) == 230


def test_scoring_needs_a_champion_and_fails_without_retrying(
    prefect_server, home, tmp_path, monkeypatch
) -> None:
    """A ConfigError is not retried: the store is asked once, not three times (counted, not
    timed: the 1 s and 5 s retry delays made a wall-clock bound flake-prone)."""
    import mlflow
    from prefect.context import TaskRunContext

    import tasks.registry
    from stores import resolve_stores

    asked = []  # the attempts of the task that loads the champion
    real = tasks.registry.registry_client

    def counted(st):
        if TaskRunContext.get() is not None:
            asked.append(TaskRunContext.get().task_run.run_count)
        return real(st)

    monkeypatch.setattr(tasks.registry, "registry_client", counted)
    path = tmp_path / "orders.csv"
    sales(20, 0, 5).to_csv(path, index=False)
    with pytest.raises(ConfigError, match="no MLflow store at"):
        score_features(config(home, path))
    assert asked == [1]
    monkeypatch.undo()
    st = resolve_stores(home)
    mlflow.MlflowClient(st.tracking_uri, st.tracking_uri).create_registered_model("aepipe-sales")
    with pytest.raises(ConfigError, match="'aepipe-sales' has no champion to score with"):
        score_features(config(home, path))


def test_an_iceberg_source_is_scored_by_its_appended_snapshots(
    prefect_server, home, tmp_path
) -> None:
    """Issue 42: scoring reads the rows appended since the snapshot the version's last commit
    recorded; a commit that was not an append (rows deleted) falls back to reading the whole
    table and comparing, and says so."""
    import pyarrow as pa
    from pyiceberg.catalog import load_catalog
    from pyiceberg.expressions import EqualTo

    uri = f"sqlite:///{tmp_path / 'lake.db'}"
    lake = load_catalog("aepipe", type="sql", uri=uri, warehouse=(tmp_path / "lake").as_uri())
    lake.create_namespace("shop")
    first = pa.Table.from_pandas(sales(300, 0, 1), preserve_index=False)
    orders = lake.create_table("shop.orders", schema=first.schema)
    orders.append(first)
    cfg = config(home, "shop.orders", entity_id="order_id", timestamp="ts")
    cfg = build_config(
        {
            **cfg.model_dump(),
            "source": {**cfg.source.model_dump(), "format": "iceberg", "catalog": uri},
        }
    )
    reduce_features(cfg)
    orders.append(pa.Table.from_pandas(sales(3, 300, 2), preserve_index=False))
    scored = score_features(cfg)
    assert (scored.rows_seen, scored.rows_written) == (3, 3)
    assert scored.selection.startswith("3 rows read past ")
    assert "scored 3 new of 3 rows read since the last run into" in scored.to_text()
    assert len(read_features("sales", home=home)) == 303

    orders.delete(EqualTo("order_id", "o5"))  # not an append: every row is compared again
    orders.append(pa.Table.from_pandas(sales(2, 303, 3), preserve_index=False))
    again = score_features(cfg)
    assert (again.rows_seen, again.rows_written) == (304, 2)
    assert "rows whose (entity id, event time) pairs the table lacks" in again.selection
