"""MLflow plumbing shared by the train and register stages: stores, experiments, live metrics."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

from aepipe.settings import Stores


def configure_mlflow(stores: Stores) -> Any:
    """Point MLflow's tracking and registry at the configured stores; return a client."""
    import mlflow

    mlflow.set_tracking_uri(stores.tracking_uri)
    mlflow.set_registry_uri(stores.tracking_uri)
    return mlflow.MlflowClient(stores.tracking_uri, stores.tracking_uri)


def ensure_experiment(name: str, stores: Stores) -> str:
    """Experiment id for ``name``; a new local experiment keeps artifacts under the home folder."""
    import mlflow

    found = mlflow.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    location = None
    if stores.tracking_uri.startswith("sqlite:"):
        location = (stores.artifact_root / name).as_uri()
    return mlflow.create_experiment(name, artifact_location=location)


def git_commit() -> str | None:
    """The code version: the git commit of this checkout, when there is one."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


class MlflowLogger:
    """Training callback: logs ``train_loss``, ``val_loss`` and ``lr`` per epoch to a run,
    so the MLflow UI shows the curves while training goes on."""

    KEYS = ("train_loss", "val_loss", "lr")

    def __init__(self, client: Any, run_id: str) -> None:
        self.client, self.run_id = client, run_id

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, float(logs[k]), now, int(epoch)) for k in self.KEYS if k in logs]
        self.client.log_batch(self.run_id, metrics=metrics)
