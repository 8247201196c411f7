"""prefect.yaml for real (:mod:`tests.deployments`): `prefect deploy`, process workers on the
cpu and gpu pools, a reduce-features run that hands training to train-autoencoder, upkeep,
and two training runs at once that the gpu deployment's concurrency limit makes take turns.
Triggers and the allow-list are tests/test_deployment_triggers.py (a server of its own, so
the two files run side by side)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.deployments import Deployed, deployed
from tests.services import prefect_api

pytestmark = pytest.mark.slow


def two_training_runs_take_turns(deployment: Deployed) -> None:
    """Start two train-autoencoder runs at once: with the deployment's concurrency limit of 1
    (ENQUEUE) the second waits for the first, so their run times do not overlap."""
    api = deployment.api
    trainer = prefect_api(api, "GET", "/deployments/name/train-autoencoder/train-autoencoder")
    assert trainer["global_concurrency_limit"]["limit"] == 1
    (earlier,) = prefect_api(
        api, "POST", "/flow_runs/filter", {"deployments": {"id": {"any_": [trainer["id"]]}}}
    )
    runs = [
        prefect_api(
            api,
            "POST",
            f"/deployments/{trainer['id']}/create_flow_run",
            {"parameters": earlier["parameters"] | {"request_id": f"turns-{i}"}},
        )["id"]
        for i in range(2)
    ]
    states = deployment.wait_for(runs)
    assert [s["state_type"] for s in states] == ["COMPLETED", "COMPLETED"]
    first, second = sorted(states, key=lambda s: s["start_time"])
    assert second["start_time"] >= first["end_time"], (first, second)


def test_deploy_and_run_with_training_on_the_gpu_pool(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with deployed(tmp_path) as deployment:
        config = {
            "home": str(home),
            "model": {"code_size": 8},
            "train": {"epochs": 3, "lr": 3e-3, "patience": 0},
            "train_deployment": "train-autoencoder/train-autoencoder",
        }
        deployment.run("reduce-features/reduce-features", config, timeout=600)
        deployment.run("maintain-features/maintain-features", {"home": str(home)})
        two_training_runs_take_turns(deployment)

    import mlflow

    from feature_store import read_features

    frame = read_features("digits", home=home)
    assert len(frame) == 1797 and set(frame["model_version"]) == {1}
    assert not (home / "mlflow.db").exists()  # the runs took the Secret block's store
    client = mlflow.MlflowClient(deployment.tracking, deployment.tracking)
    (trained_run,) = [
        r
        for r in client.search_runs(
            [client.get_experiment_by_name("aepipe-digits").experiment_id],
            "tags.`aepipe.request_id` != ''",
        )
        if not r.data.tags["aepipe.request_id"].startswith("turns-")
    ]
    assert set(frame["run_id"]) == {trained_run.info.run_id}
    assert trained_run.data.metrics["epochs_run"] == 3  # trained by the gpu pool's run
