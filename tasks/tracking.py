"""MLflow tracking shared by the stages: the stores, experiments, runs' live metrics, the
code version. The model registry (versions, aliases, promotion) is :mod:`tasks.registry`."""

from __future__ import annotations

import logging
import os
import subprocess
import time
from pathlib import Path
from typing import Any

from stores import Stores, redact_uri
from stores.locks import home_lock
from tasks.config import ConfigError

# A remote tracking server that is down should fail a run in about a minute, not after
# MLflow's default 7 retries with doubling back-off and 120 s timeouts; set these variables
# yourself to wait longer.
HTTP_RETRY_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "15",
}


class TrackingUnavailable(ConfigError):
    """The MLflow tracking server cannot be reached; the message never shows credentials."""


def check_tracking(stores: Stores) -> None:
    """Fail fast, in one line, when a remote tracking server cannot be reached (bounded
    retries), so a run never trains for an hour to fail at registration."""
    uri = stores.tracking_uri
    if uri.startswith(("postgresql", "mysql", "mssql")):  # a database store: one connection
        from stores.remote import StoreUnavailable, check_database

        try:  # (MLflow itself retries a missing database for over a minute)
            check_database(uri, "the MLflow tracking store")
        except StoreUnavailable as err:
            raise TrackingUnavailable(stores.redact(str(err))) from None
        return
    if not uri.startswith(("http://", "https://")):
        return  # a local SQLite store: created on first use
    for key, value in HTTP_RETRY_DEFAULTS.items():
        os.environ.setdefault(key, value)
    client = configure_mlflow(stores)
    retries = logging.getLogger("urllib3.connectionpool")  # a warning per retry: the error
    level = retries.level  # below says it once
    retries.setLevel(logging.ERROR)
    try:
        client.search_experiments(max_results=1)
    except Exception as err:  # MLflow raises several types for a server that is down
        first = stores.redact(str(err).splitlines()[0] if str(err) else type(err).__name__)
        raise TrackingUnavailable(
            f"the MLflow tracking server {redact_uri(uri)} cannot be reached "
            f"({os.environ['MLFLOW_HTTP_REQUEST_MAX_RETRIES']} retries): {first[:300]}"
        ) from None
    finally:
        retries.setLevel(level)


def configure_mlflow(stores: Stores) -> Any:
    """Point MLflow's tracking and registry at the configured stores; return a client."""
    import mlflow

    if redact_uri(stores.tracking_uri) != stores.tracking_uri:
        # MLflow prints "View run at <tracking URI>" when a run ends, credentials and all,
        # and the flows' log_prints would keep that line in Prefect's logs
        os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
    mlflow.set_tracking_uri(stores.tracking_uri)
    mlflow.set_registry_uri(stores.tracking_uri)
    if stores.tracking_uri.startswith("sqlite:") and stores.tracking_uri not in _opened:
        # the first client creates and migrates a new SQLite store: two processes doing it
        # at once broke the migration ("Circular dependency detected"); they take turns
        with home_lock(stores, "mlflow-store"):
            client = mlflow.MlflowClient(stores.tracking_uri, stores.tracking_uri)
            client.search_experiments(max_results=1)
        _opened.add(stores.tracking_uri)
        return client
    return mlflow.MlflowClient(stores.tracking_uri, stores.tracking_uri)


_opened: set[str] = set()  # local stores this process has opened (so they exist, migrated)


def experiment_name(dataset: str, what: str = "") -> str:
    """The MLflow experiment of a data set's training runs, or of its ``what`` runs
    (``monitoring``: the drift checks' runs)."""
    return f"aepipe-{dataset}" + (f"-{what}" if what else "")


def ensure_experiment(name: str, stores: Stores) -> str:
    """Experiment id for ``name``; a new local experiment keeps artifacts under the home folder."""
    import mlflow
    from mlflow.exceptions import MlflowException

    found = mlflow.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    location = None
    if stores.tracking_uri.startswith("sqlite:"):
        location = (stores.artifact_root / name).as_uri()
    try:
        return mlflow.create_experiment(name, artifact_location=location)
    except MlflowException:  # another run created it since we looked: use theirs
        found = mlflow.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


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
