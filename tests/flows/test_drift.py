"""Every scoring run checks its rows against the model's reference: a batch like the
training data raises nothing, a shifted one is found with the columns that moved, a batch
too small is not judged; each check is a row of the data set's drift table."""

from __future__ import annotations

import pandas as pd
import pytest

from feature_store import read_drift
from flows.reduce_features import reduce_features
from flows.score_features import score_features
from stores import resolve_stores
from tasks.config import ConfigError, PipelineConfig, build_config
from tasks.registry import RetrainRequest, retrain_config
from tasks.score import announce_drift
from tasks.validate import check_stores

pytestmark = pytest.mark.slow


def drift_events(expected: int, timeout: float = 90) -> list:
    """The aepipe.drift.detected events of this data set the session's Prefect server has
    stored, once there are ``expected`` of them (events are sent and stored asynchronously:
    seconds apart on a busy machine)."""
    import time

    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter

    deadline = time.monotonic() + timeout
    while True:
        with get_client(sync_client=True) as client:
            wanted = EventFilter(event=EventNameFilter(name=["aepipe.drift.detected"]))
            page = client.read_events(wanted, limit=50)  # the server's most
        found = [e for e in page.events if e.resource.id == "aepipe.dataset.orders"]
        if len(found) >= expected or time.monotonic() > deadline:
            return found
        time.sleep(1)


def test_scoring_runs_check_drift_and_record_it(
    aepipe_main, home, tmp_path, orders, monkeypatch
) -> None:
    # issue 40.7: pictures link to the MLflow UI where the user runs it, not a fixed port
    monkeypatch.setenv("AEPIPE_MLFLOW_UI", "http://127.0.0.1:5055")
    path = tmp_path / "orders.csv"
    parts = [orders(3000, 0, 1)]
    pd.concat(parts).to_csv(path, index=False)
    cfg = build_config(
        {
            "home": str(home),
            "dataset": "orders",
            "source": {"path": str(path), "entity_id": "order_id", "timestamp": "ts"},
            "model": {"code_size": 2, "params": {"hidden": [16]}},
            "train": {"epochs": 8, "lr": 3e-3, "patience": 0},
        }
    )
    reduce_features(cfg)  # the first write checks its held-out rows

    parts.append(orders(600, 3000, 2))  # like the training data
    pd.concat(parts).to_csv(path, index=False)
    same = score_features(cfg)
    assert same.drift is not None and same.drift.checked and not same.drift.drifted
    assert "drift: none found in 600 rows" in same.to_text()
    assert not announce_drift(same, cfg)  # a clean batch sets nothing off

    parts.append(orders(600, 3600, 3, scale=1.6))  # bigger orders: amount and items moved
    pd.concat(parts).to_csv(path, index=False)
    moved = score_features(cfg)
    assert moved.drift.drifted
    assert set(moved.drift.drifted_columns[:2]) == {"amount", "items"}
    assert "region" not in moved.drift.drifted_columns
    assert "drift: DETECTED in 600 rows" in moved.to_text()
    # issue 40.5: no deployment listens on this (test) server, and the run says so
    assert "but no deployment on this Prefect server listens for it" in moved.retrain
    assert moved.retrain in moved.to_text()
    (event,) = drift_events(1)  # the reduce-features deployment's trigger retrains on it
    assert event.resource.id == "aepipe.dataset.orders"
    # names only: the retrain loads the drifted version's config from the tracking store
    assert "config" not in event.payload
    request = RetrainRequest.model_validate(event.payload["retrain"])
    assert request == RetrainRequest(dataset="orders", registered_model="aepipe-orders", version=1)
    deployment_cfg = PipelineConfig(home=str(home))  # the deployment's own (digits) config
    assert retrain_config(request, deployment_cfg, resolve_stores(home)) == cfg
    forged = RetrainRequest(dataset="digits", registered_model="aepipe-orders", version=1)
    with pytest.raises(ConfigError, match="models the data set 'orders', not 'digits'"):
        retrain_config(forged, deployment_cfg, resolve_stores(home))
    # issue 47.7: a run of another data set cannot take this registered model over (it
    # became the champion, and every later scoring of orders failed); checked before work
    other = PipelineConfig(home=str(home), registered_model="aepipe-orders")
    with pytest.raises(ConfigError, match="models the data set 'orders', not 'digits'"):
        check_stores(other, resolve_stores(home))
    assert event.payload["drifted_columns"] == moved.drift.drifted_columns
    quiet = cfg.model_copy(update={"drift": cfg.drift.model_copy(update={"retrain": False})})
    parts.append(orders(600, 3600 + 600, 5, scale=1.6))
    pd.concat(parts).to_csv(path, index=False)
    recorded = score_features(quiet)
    assert recorded.drift.drifted  # drift.retrain false: recorded, and no event
    assert recorded.retrain.startswith("retrain: off (drift.retrain false)")
    assert not announce_drift(recorded, quiet) and announce_drift(recorded, cfg)

    parts.append(orders(50, 4800, 4, scale=3.0))  # too few rows to judge
    pd.concat(parts).to_csv(path, index=False)
    few = score_features(cfg)
    assert not few.drift.checked and "50 rows, fewer than the 200" in few.drift.to_text()

    history = read_drift("orders", home=home)
    assert list(history["rows"])[1:] == [600, 600, 600, 50]
    assert list(history["drifted"])[1:] == [False, True, True, False]
    # the first write scores every row, but checks only those held out of training (val and
    # test, about 30 %): training rows score lower than any new rows would
    assert 700 < history["rows"].iloc[0] < 1100 and not history["drifted"].iloc[0]
    shown = aepipe_main("drift", "orders", "--home", str(home), cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert "(5 checks, 2 with drift)" in shown.stdout

    # every check is a metric step of the version's MLflow monitoring run, with a picture
    import mlflow

    from tasks.monitor import MONITOR_TAG, PICTURES, VERSION_TAG

    st = resolve_stores(home)
    client = mlflow.MlflowClient(st.tracking_uri, st.tracking_uri)
    version = client.get_model_version(moved.model_name, str(moved.model_version))
    run = client.get_run(version.tags[VERSION_TAG])
    assert run.data.tags[MONITOR_TAG] == f"{moved.model_name}/{moved.model_version}"
    detected = client.get_metric_history(run.info.run_id, "drift_detected")
    assert [m.value for m in sorted(detected, key=lambda m: m.step)] == [0, 0, 1, 1, 0]
    assert run.data.metrics["drift_rows"] == 50 and "psi/amount" in run.data.metrics
    pictures = client.list_artifacts(run.info.run_id, PICTURES)
    assert len(pictures) == 4  # the check of 50 rows has none

    # and the Prefect UI shows each run's check as a table and the picture
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as prefect:
        keys = ArtifactFilterKey(any_=["aepipe-orders-drift", "aepipe-orders-drift-scores"])
        found = prefect.read_artifacts(artifact_filter=ArtifactFilter(key=keys))
    tables = [a for a in found if a.type == "table"]
    images = [a for a in found if a.type == "image"]
    assert len(tables) == 5 and len(images) == 4
    assert any("amount" in str(a.data) and "drift" in str(a.data) for a in tables)
    assert all(f"run_id={run.info.run_id}" in str(a.data) for a in images)
    assert all(str(a.data).startswith("http://127.0.0.1:5055/get-artifact?") for a in images)
    # issue 40.7: on the run the user opens (the scoring or training run itself), not on a
    # task of the partitioned write's subflow
    with get_client(sync_client=True) as prefect:
        runs = [prefect.read_flow_run(a.flow_run_id) for a in found]
        flows = {prefect.read_flow(r.flow_id).name for r in runs}
    assert all(a.task_run_id is None for a in found)
    assert all(r.parent_task_run_id is None for r in runs)
    assert flows == {"reduce-features", "score-features"}
