"""prefect.yaml: its deployments point at real flows with parameters those flows accept."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import yaml
from prefect import Flow
from prefect.client.schemas.schedules import CronSchedule

ROOT = Path(__file__).resolve().parents[1]


def load_flow(entrypoint: str) -> Flow:
    path, name = entrypoint.split(":")
    spec = importlib.util.spec_from_file_location("entry", ROOT / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, name)


def test_deployments_are_valid() -> None:
    project = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    deployments = {d["name"]: d for d in project["deployments"]}
    assert "reduce-features" in deployments
    for deployment in deployments.values():
        flow = load_flow(deployment["entrypoint"])
        assert isinstance(flow, Flow)
        if "parameters" in deployment:  # train-autoencoder gets its parameters per run
            flow.validate_parameters(deployment["parameters"])
        for schedule in deployment.get("schedules", []):
            CronSchedule(cron=schedule["cron"], timezone=schedule.get("timezone"))
    reduce = deployments["reduce-features"]
    assert reduce["schedules"][0]["cron"] == "0 2 * * *"
    from prefect.events.schemas.deployment_triggers import DeploymentEventTrigger

    (retrain,) = [DeploymentEventTrigger.model_validate(t) for t in reduce["triggers"]]
    assert retrain.expect == {"aepipe.drift.detected"} and retrain.enabled
    assert reduce["work_pool"]["name"] == "cpu"
    score = deployments["score-features"]
    assert score["schedules"][0]["cron"] == "15 * * * *" and score["work_pool"]["name"] == "cpu"
    assert score["parameters"] == reduce["parameters"]  # the same data set, one definition
    trainer = deployments["train-autoencoder"]
    assert trainer["work_pool"]["name"] == "gpu" and trainer["concurrency_limit"]["limit"] == 1
    upkeep = deployments["maintain-features"]
    assert upkeep["schedules"][0]["cron"] == "30 3 * * *" and upkeep["work_pool"]["name"] == "cpu"
    assert all(d["tags"] == ["aepipe"] for d in deployments.values())
