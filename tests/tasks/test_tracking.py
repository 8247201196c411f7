"""MLflow plumbing: local experiments keep artifacts at home; live per-epoch metrics."""

from __future__ import annotations

import numpy as np

import ae_models
from tasks.tracking import MlflowLogger, configure_mlflow, ensure_experiment


def test_mlflow_logger_records_each_epoch(tmp_stores) -> None:
    client = configure_mlflow(tmp_stores)
    experiment = ensure_experiment("aepipe-test", tmp_stores)
    assert ensure_experiment("aepipe-test", tmp_stores) == experiment
    location = client.get_experiment(experiment).artifact_location
    assert location == (tmp_stores.artifact_root / "aepipe-test").as_uri()
    run = client.create_run(experiment)
    x = np.random.default_rng(0).random((200, 12), dtype=np.float32)
    model = ae_models.create_model("deep", input_dim=12, code_size=3)
    cfg = ae_models.TrainConfig(epochs=4, batch_size=32, patience=0)
    ae_models.train(model, x, x[:50], cfg, [MlflowLogger(client, run.info.run_id)])
    history = client.get_metric_history(run.info.run_id, "val_loss")
    assert [m.step for m in history] == [1, 2, 3, 4]
    assert len(client.get_metric_history(run.info.run_id, "lr")) == 4


def test_an_experiment_another_run_created_meanwhile_is_used(tmp_stores, monkeypatch) -> None:
    """Two first runs at once: both look the experiment up, find none, and create it; the
    second create fails with "already exists" (it failed the run in a fresh clone's suite).
    The lookup is made to miss once, as the losing run's did."""
    import mlflow

    configure_mlflow(tmp_stores)
    made = ensure_experiment("aepipe-race", tmp_stores)
    real = mlflow.get_experiment_by_name
    calls = []

    def missed_once(name):
        calls.append(name)
        return None if len(calls) == 1 else real(name)

    monkeypatch.setattr(mlflow, "get_experiment_by_name", missed_once)
    assert ensure_experiment("aepipe-race", tmp_stores) == made
    assert len(calls) == 2
