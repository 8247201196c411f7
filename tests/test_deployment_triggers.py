"""prefect.yaml's triggers and guards for real (:mod:`tests.deployments`): a drifted scoring
run retrains through reduce-features' trigger, a clean one does not, and a run cannot read a
file outside the places the operator allowed."""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
import pytest

from feature_store import read_drift
from tests.deployments import Deployed, deployed, logged
from tests.services import prefect_api

pytestmark = pytest.mark.slow


def drift_retrains_through_the_trigger(deployment: Deployed, home: Path, orders) -> None:
    """Score-features deployment runs on a clean batch and on a drifted one: the drifted
    run emits aepipe.drift.detected and reduce-features' trigger starts one retrain with
    that run's config; the clean run starts nothing."""
    api = deployment.api
    path = home.parent / "orders.csv"
    parts = [orders(3000, 0, 1)]
    config = {
        "home": str(home),
        "dataset": "orders",
        "source": {"path": str(path), "entity_id": "order_id", "timestamp": "ts"},
        "model": {"code_size": 2, "params": {"hidden": [16]}},
        "train": {"epochs": 8, "lr": 3e-3, "patience": 0},
    }

    def run(name: str) -> None:
        pd.concat(parts).to_csv(path, index=False)
        deployment.run(f"{name}/{name}", config)

    run("reduce-features")
    reducer = prefect_api(api, "GET", "/deployments/name/reduce-features/reduce-features")
    by_deployment = {"deployments": {"id": {"any_": [reducer["id"]]}}}
    before = {r["id"] for r in prefect_api(api, "POST", "/flow_runs/filter", by_deployment)}
    parts.append(orders(600, 3000, 2))  # like the training data
    run("score-features")
    parts.append(orders(600, 3600, 3, scale=1.6))  # bigger orders
    run("score-features")
    deadline = time.monotonic() + 300
    while True:
        runs = [r for r in prefect_api(api, "POST", "/flow_runs/filter", by_deployment)]
        new = [r for r in runs if r["id"] not in before]
        if new and all(r["state_type"] in ("COMPLETED", "FAILED", "CRASHED") for r in new):
            break
        assert time.monotonic() < deadline, [r["state_name"] for r in new] or "no run"
        time.sleep(2)
    # the drifted run's report (an artifact on its flow run) names who retrains (issue 40.5)
    reports = prefect_api(api, "POST", "/artifacts/filter", {"artifacts": {"key": {"any_": [
        "aepipe-score-orders"]}}})  # fmt: skip
    assert any("reduce-features/reduce-features will retrain it" in a["data"] for a in reports)
    (retrain,) = new  # the drifted batch's; the clean batch's run would be here by now
    assert retrain["state_type"] == "COMPLETED", retrain["state_name"]
    # the event names the data set and version only; the run loaded version 1's config
    assert retrain["parameters"]["retrain"] == {
        "dataset": "orders", "registered_model": "aepipe-orders", "version": 1
    }  # fmt: skip
    import mlflow

    client = mlflow.MlflowClient(deployment.tracking, deployment.tracking)
    retrained = client.get_model_version("aepipe-orders", "2")
    assert client.get_run(retrained.run_id).data.params["train.epochs"] == "8"
    history = read_drift("orders", home=home)  # the retrain's first write is checked too
    scored = history[history["model_version"] == 1]
    assert list(scored["drifted"]) == [False, False, True]  # first write, clean, drifted


def a_place_not_allowed_is_refused(deployment: Deployed, home: Path) -> None:
    """Whoever can start a deployment's run cannot make it read a file outside the places
    the operator allowed (AEPIPE_ALLOWED_PATHS): the run fails before it reads anything."""
    api = deployment.api
    scorer = prefect_api(api, "GET", "/deployments/name/score-features/score-features")
    config = {
        "home": str(home),
        "dataset": "passwd",
        "source": {"path": "/etc/passwd", "format": "csv", "delimiter": ":", "header": False},
    }
    run = prefect_api(
        api, "POST", f"/deployments/{scorer['id']}/create_flow_run",
        {"parameters": {"config": config}},
    )  # fmt: skip
    (state,) = deployment.wait_for([run["id"]], timeout=120)
    assert state["state_type"] == "FAILED"
    refused = "source.path '/etc/passwd' is not this deployment's own"
    assert refused in (state["state"]["message"] or "") or logged(api, run["id"], refused)
    assert not (home / "data" / "passwd").exists()


def test_drift_retrains_through_the_trigger_and_a_place_not_allowed_is_refused(
    tmp_path: Path, orders
) -> None:
    home = tmp_path / "home"
    with deployed(tmp_path) as deployment:
        a_place_not_allowed_is_refused(deployment, home)
        drift_retrains_through_the_trigger(deployment, home, orders)
