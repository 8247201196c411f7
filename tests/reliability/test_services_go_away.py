"""Services that go away (issue 22.2), each a real server on loopback: what a run does when
the MLflow server, the catalog database or the Prefect server stops answering, and what it
leaves behind."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
from prefect import task

import flows.reduce_features as reduce_flow
from feature_store import read_features
from flows.reduce_features import reduce_features
from tasks.config import build_config
from tasks.register import register_model
from tasks.tracking import TrackingUnavailable
from tests.conftest import AEPIPE
from tests.services import (
    free_port,
    prefect_api,
    prefect_env,
    start_mlflow,
    start_prefect,
    stop,
)

pytestmark = pytest.mark.slow


def test_mlflow_stopped_before_registration_keeps_the_model_for_the_next_run(
    prefect_server, home, tmp_path, monkeypatch
) -> None:
    """The tracking server stops after training, before registration: the run fails in one
    line saying the model is kept; with the server back, the next run registers that model,
    in its training run, without training again."""
    import mlflow

    port = free_port()
    folder = tmp_path / "mlflow-server"
    uri = f"http://127.0.0.1:{port}"
    monkeypatch.setenv("AEPIPE_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")  # fail in seconds, not minutes
    cfg = build_config(
        {"home": str(home), "model": {"code_size": 4}, "train": {"epochs": 2, "patience": 0}}
    )
    server = start_mlflow(folder, port)
    stopped = []

    @task(name="register")
    def stop_then_register(trained, ingested, data, cfg, stores):
        stop(server)  # the server goes away between training and registration
        stopped.append(trained)
        return register_model(trained, ingested, data, cfg, stores)

    try:
        with monkeypatch.context() as patch:
            patch.setattr(reduce_flow, "register", stop_then_register)
            with pytest.raises(TrackingUnavailable) as err:
                reduce_features(cfg)
        message = str(err.value)
        assert f"the MLflow tracking server {uri} cannot be reached" in message
        assert "stopped answering during registration" in message
        assert "registers it without training again" in message and "\n" not in message
        (trained,) = stopped

        server = start_mlflow(folder, port)  # back, with the runs it had
        summary = reduce_features(cfg)
        client = mlflow.MlflowClient(uri, uri)
        experiment = client.get_experiment_by_name("aepipe-digits").experiment_id
        (run,) = client.search_runs([experiment])  # no second training run
        assert run.info.run_id == trained.run_id == summary.run_id
        assert run.info.status == "FINISHED"
        (version,) = client.search_model_versions("name='aepipe-digits'")
        assert version.run_id == trained.run_id and summary.model_version == 1
        name = Path(trained.model_dir).name  # the one model trained: nothing trained again
        models = sorted(p.name for p in (home / "models" / "digits").iterdir())
        assert models == sorted(["checkpoints", name, f"{name}-plots"])
        assert summary.rows_written == 1797
    finally:
        stop(server)


def test_the_prefect_server_restarted_during_a_run(tmp_path) -> None:
    """`aepipe run` against a Prefect server that is stopped while the run trains and started
    again on its database: the run goes on (Prefect's client retries a server it reached
    before, for about a minute) and the server ends up with the run and every task COMPLETED."""
    env = prefect_env(tmp_path, free_port())
    log = tmp_path / "prefect-server.log"
    server = start_prefect(env, log)
    work = tmp_path / "work"
    work.mkdir()
    run = subprocess.Popen(
        [AEPIPE, "run", "--source", "digits", "--epochs", "30", "--set", "train.patience=0"],
        cwd=work,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 180
        while not any(
            t["name"].startswith("train") and t["state_type"] == "RUNNING"
            for t in prefect_api(env["PREFECT_API_URL"], "POST", "/task_runs/filter", {})
        ):
            assert run.poll() is None and time.monotonic() < deadline, run.stderr.read()[-3000:]
            time.sleep(0.5)
        stop(server)  # mid-training
        server = start_prefect(env, log)
        out, err = run.communicate(timeout=300)
        assert run.returncode == 0, out[-2000:] + err[-3000:]
        (flow_run,) = [
            r
            for r in prefect_api(env["PREFECT_API_URL"], "POST", "/flow_runs/filter", {})
            if r["name"] and not r["parent_task_run_id"]
        ]
        assert flow_run["state_type"] == "COMPLETED"
        tasks = prefect_api(env["PREFECT_API_URL"], "POST", "/task_runs/filter", {})
        assert tasks and {t["state_type"] for t in tasks} == {"COMPLETED"}, [
            (t["name"], t["state_type"]) for t in tasks
        ]
    finally:
        run.kill()
        stop(server)
    frame = read_features("digits", home=work / ".aepipe")
    assert len(frame) == 1797 and frame["entity_id"].is_unique
