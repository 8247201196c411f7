"""Register: record the training run in MLflow, log the model, register a version, promote it."""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
from prefect import task

import ae_models
from aepipe.settings import Stores
from tasks.config import PipelineConfig
from tasks.ingest import ROLE_COLUMNS, IngestResult
from tasks.train import TrainedModel

CHAMPION, CHALLENGER = "champion", "challenger"
LOWER_IS_BETTER = ("mse", "bce", "loss", "error")
PYFUNC_FILE = Path(__file__).with_name("pyfunc_model.py")
PIP_REQUIREMENTS = ["torch", "numpy", "pandas", "mlflow"]


@dataclass(frozen=True)
class RegisteredModel:
    """Reference to the MLflow run and registered version, and the promotion outcome."""

    run_id: str
    experiment_id: str
    model_name: str
    version: int
    aliases: list[str]
    promoted: bool
    reason: str


def configure_mlflow(stores: Stores) -> None:
    """Point MLflow's tracking and registry at the configured stores."""
    import mlflow

    mlflow.set_tracking_uri(stores.tracking_uri)
    mlflow.set_registry_uri(stores.tracking_uri)


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


def _git_commit() -> str | None:
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


def lower_is_better(metric: str) -> bool:
    """Direction of a promotion metric, from its name (errors and losses go down)."""
    return any(word in metric for word in LOWER_IS_BETTER)


def decide_promotion(metric: str, challenger: float, champion: float | None) -> tuple[bool, str]:
    """Whether the challenger should take ``champion``, and a sentence saying why."""
    if champion is None:
        return True, "first version: no champion yet"
    better = challenger < champion if lower_is_better(metric) else challenger > champion
    verb = "beats" if better else "does not beat"
    return better, f"{metric} {challenger:.6g} {verb} champion's {champion:.6g}"


def register_model(
    trained: TrainedModel, ingested: IngestResult, cfg: PipelineConfig, stores: Stores
) -> RegisteredModel:
    """Log params, per-epoch metrics and the pyfunc model; register a version; promote it."""
    import mlflow
    from mlflow.entities import Metric
    from mlflow.exceptions import MlflowException
    from mlflow.models import infer_signature

    from tasks.pyfunc_model import AutoencoderPyfunc

    configure_mlflow(stores)
    client = mlflow.MlflowClient()
    experiment_id = ensure_experiment(f"aepipe-{cfg.dataset}", stores)
    example = pq.read_table(ingested.path).slice(0, 5).to_pandas()
    example = example.drop(columns=[c for c in ROLE_COLUMNS if c in example and c != "entity_id"])
    tags = {
        "aepipe.source": cfg.source.path,
        "aepipe.device": trained.device,
        "aepipe.precision": trained.precision,
        "aepipe.model": trained.model,
    }
    commit = _git_commit()
    if commit:
        tags["aepipe.git_commit"] = commit
    with mlflow.start_run(experiment_id=experiment_id, tags=tags) as run:
        run_id = run.info.run_id
        mlflow.log_params(cfg.flat_params())
        now = int(time.time() * 1000)
        history = [
            Metric(key, float(row[key]), now, int(row["epoch"]))
            for row in trained.history
            for key in ("train_loss", "val_loss", "lr")
        ]
        for start in range(0, len(history), 900):
            client.log_batch(run_id, metrics=history[start : start + 900])
        mlflow.log_metrics(trained.metrics)
        predictor = AutoencoderPyfunc().load_folder(trained.model_dir)
        signature = infer_signature(example, predictor.predict(None, example))
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(PYFUNC_FILE),
            artifacts={"model_dir": trained.model_dir},
            code_paths=[str(Path(ae_models.__file__).parent), str(Path(__file__).parent)],
            signature=signature,
            input_example=example,
            pip_requirements=PIP_REQUIREMENTS,
        )
    version = mlflow.register_model(info.model_uri, cfg.model_name)
    number = int(version.version)
    metric = cfg.promotion_metric
    challenger_value = float(trained.metrics[metric])
    try:
        current = client.get_model_version_by_alias(cfg.model_name, CHAMPION)
        champion_value = client.get_run(current.run_id).data.metrics.get(metric)
    except MlflowException:
        current, champion_value = None, None
    promoted, reason = decide_promotion(metric, challenger_value, champion_value)
    alias = CHAMPION if promoted else CHALLENGER
    client.set_registered_model_alias(cfg.model_name, alias, str(number))
    for key, value in {
        "promotion.decision": "promoted" if promoted else "refused",
        "promotion.metric": metric,
        "promotion.challenger_value": f"{challenger_value:.6g}",
        "promotion.champion_value": "" if champion_value is None else f"{champion_value:.6g}",
        "promotion.champion_version": "" if current is None else str(current.version),
        "promotion.reason": reason,
        "promotion.at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }.items():
        client.set_model_version_tag(cfg.model_name, str(number), key, value)
    return RegisteredModel(run_id, experiment_id, cfg.model_name, number, [alias], promoted, reason)


# No automatic retry: a retry after a partial failure could register a second version.
register = task(name="register")(register_model)
