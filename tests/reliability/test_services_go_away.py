"""Services that go away (issue 22.2), each a real server on loopback: what a run does when
the MLflow server, the catalog database or the Prefect server stops answering, and what it
leaves behind."""

from __future__ import annotations

from pathlib import Path

import pytest
from prefect import task

import flows.reduce_features as reduce_flow
from flows.reduce_features import reduce_features
from tasks.config import build_config
from tasks.register import register_model
from tasks.tracking import TrackingUnavailable
from tests.services import free_port, start_mlflow, stop

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
