"""Register: record the training run in MLflow, log the model, register a version, promote it."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
from prefect import task

import ae_models
from aepipe.settings import Stores
from tasks.config import PipelineConfig
from tasks.ingest import ROLE_COLUMNS, IngestResult
from tasks.tracking import configure_mlflow
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
    """Finish the training run (final metrics, pyfunc model), register a version, promote it."""
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.models import infer_signature

    from tasks.pyfunc_model import AutoencoderPyfunc

    client = configure_mlflow(stores)
    example = pq.read_table(ingested.path).slice(0, 5).to_pandas()
    example = example.drop(columns=[c for c in ROLE_COLUMNS if c in example and c != "entity_id"])
    # the run was opened by the train stage, which logged params and per-epoch losses
    with mlflow.start_run(run_id=trained.run_id) as run:
        run_id = run.info.run_id
        experiment_id = run.info.experiment_id
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
