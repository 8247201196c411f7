"""Register: finish the training run in MLflow, register a version, promote the better model.

Every new version gets the alias ``challenger``. Promotion scores the challenger and the
current ``champion`` on the same fixed evaluation split (the data set's test split, as raw
rows through each model's own normalizer) with a configurable metric and direction; the
winner holds ``champion``. Each decision, automatic or manual, is recorded as tags on the
version: when, which metric, both values, and why.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from prefect import task

import ae_models
from aepipe.settings import Stores
from tasks.config import ConfigError, PipelineConfig
from tasks.ingest import EVENT_TIMESTAMP, LABEL, SPLIT, IngestResult, NormalizedData
from tasks.tracking import configure_mlflow, registry_lock
from tasks.train import TrainedModel

CHAMPION, CHALLENGER = "champion", "challenger"
LOWER_IS_BETTER = ("mse", "bce", "loss", "error")
EVAL_METRIC = "eval_mse"  # mean reconstruction MSE on the fixed evaluation split, scored live
PYFUNC_FILE = Path(__file__).with_name("pyfunc_model.py")
PIP_REQUIREMENTS = ["torch", "numpy", "pandas", "pyarrow", "mlflow"]


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


def decide_promotion(
    metric: str, challenger: float, champion: float | None, direction: str = "auto"
) -> tuple[bool, str]:
    """Whether the challenger should take ``champion``, and a sentence saying why."""
    if champion is None:
        return True, "first version: no champion yet"
    lower = lower_is_better(metric) if direction == "auto" else direction == "min"
    better = challenger < champion if lower else challenger > champion
    verb = "beats" if better else "does not beat"
    goal = "lower" if lower else "higher"
    return better, (
        f"{metric} {challenger:.6g} {verb} champion's {champion:.6g} ({goal} is better)"
    )


EVAL_MAX_ROWS = 20_000


def evaluation_rows(ingested: IngestResult, data: NormalizedData) -> pd.DataFrame:
    """Raw rows of the fixed evaluation split (the test split, its first ``EVAL_MAX_ROWS``
    rows at most), as users would send them."""
    splits = pq.read_table(data.path, columns=[SPLIT]).column(SPLIT).to_numpy(zero_copy_only=False)
    which = "test" if (splits == "test").any() else "val"
    picked = np.flatnonzero(splits == which)[:EVAL_MAX_ROWS]
    raw = pq.read_table(ingested.path).drop_columns([EVENT_TIMESTAMP])
    rows = raw.take(picked).to_pandas()  # only the evaluation rows reach pandas
    return rows.drop(columns=[LABEL], errors="ignore")


def mean_score(predict: Any, rows: pd.DataFrame) -> float:
    """Mean reconstruction MSE that ``predict`` (raw rows -> feature rows) gives ``rows``:
    ``recon_mse``, comparable whatever score kind each model flags anomalies with (models
    logged before it existed give their ``recon_error``, which was the MSE)."""
    out = predict(rows)
    return float(np.mean(out["recon_mse"] if "recon_mse" in out else out["recon_error"]))


def record_decision(
    client: Any,
    name: str,
    version: int,
    *,
    decision: str,
    metric: str,
    challenger_value: float | None,
    champion_value: float | None,
    champion_version: str | None,
    reason: str,
) -> None:
    """Write a promotion decision onto the version as ``promotion.*`` tags."""

    def fmt(v: float | None) -> str:
        return "" if v is None else f"{v:.6g}"

    tags = {
        "promotion.decision": decision,
        "promotion.metric": metric,
        "promotion.challenger_value": fmt(challenger_value),
        "promotion.champion_value": fmt(champion_value),
        "promotion.champion_version": champion_version or "",
        "promotion.reason": reason,
        "promotion.at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    for key, value in tags.items():
        client.set_model_version_tag(name, str(version), key, value)


def _champion(client: Any, name: str) -> Any | None:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None


def register_model(
    trained: TrainedModel,
    ingested: IngestResult,
    data: NormalizedData,
    cfg: PipelineConfig,
    stores: Stores,
) -> RegisteredModel:
    """Finish the training run (metrics, pictures, dataset, pyfunc model), register a version as
    ``challenger``, and promote it to ``champion`` if it wins on the evaluation split."""
    import mlflow
    from mlflow.models import infer_signature

    from tasks.pyfunc_model import AutoencoderPyfunc

    client = configure_mlflow(stores)
    rows = evaluation_rows(ingested, data)
    example = rows.head(5)
    predictor = AutoencoderPyfunc().load_folder(trained.model_dir)
    challenger_eval = mean_score(lambda r: predictor.predict(None, r), rows)
    metric = cfg.promotion_metric
    measured = {**trained.metrics, EVAL_METRIC: challenger_eval}
    if metric not in measured:  # checked before anything is registered
        raise ConfigError(
            f"promotion_metric {metric!r} is not measured for this run; use one of "
            f"{sorted(measured)}"
        )
    challenger_value = float(measured[metric])
    # the run was opened by the train stage, which logged params and per-epoch losses
    with mlflow.start_run(run_id=trained.run_id) as run, warnings.catch_warnings():
        # pixel columns are integers; MLflow hints that integers cannot hold missing values
        warnings.filterwarnings("ignore", "Hint: Inferred schema contains integer column")
        run_id, experiment_id = run.info.run_id, run.info.experiment_id
        mlflow.log_metrics({**trained.metrics, EVAL_METRIC: challenger_eval})
        if Path(trained.plots_dir).is_dir():
            mlflow.log_artifacts(trained.plots_dir, artifact_path="plots")
        with warnings.catch_warnings():
            # MLflow registers its local source type twice and warns that a path is ambiguous
            warnings.filterwarnings("ignore", "The specified dataset source can be interpreted")
            dataset = mlflow.data.from_pandas(
                example,
                source=cfg.source.path,
                name=cfg.dataset,
                digest=ingested.content_digest[:16],
            )
        mlflow.log_input(dataset, context="training")
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
    # registering, comparing with the champion and promoting is a read-then-write: runs
    # sharing this home take turns, so two at once cannot both replace the champion
    with registry_lock(stores, cfg.model_name):
        version = int(mlflow.register_model(info.model_uri, cfg.model_name).version)
        client.set_registered_model_alias(cfg.model_name, CHALLENGER, str(version))

        current = _champion(client, cfg.model_name)
        champion_value: float | None = None
        reason_prefix = ""
        if current is not None:
            if metric == EVAL_METRIC:
                try:
                    champ = mlflow.pyfunc.load_model(f"models:/{cfg.model_name}@{CHAMPION}")
                    champion_value = mean_score(champ.predict, rows)
                except Exception as err:  # the champion cannot score today's data
                    reason_prefix = f"champion cannot score the evaluation split ({err}); "
                    champion_value = None
            else:
                champion_value = client.get_run(current.run_id).data.metrics.get(metric)
        promoted, reason = decide_promotion(
            metric, challenger_value, champion_value, cfg.promotion_direction
        )
        if reason_prefix:
            promoted, reason = True, reason_prefix + "challenger takes over"
        if promoted:
            client.set_registered_model_alias(cfg.model_name, CHAMPION, str(version))
            client.delete_registered_model_alias(cfg.model_name, CHALLENGER)
        record_decision(
            client,
            cfg.model_name,
            version,
            decision="promoted" if promoted else "refused",
            metric=metric,
            challenger_value=challenger_value,
            champion_value=champion_value,
            champion_version=str(current.version) if current is not None else None,
            reason=reason,
        )
    aliases = [CHAMPION] if promoted else [CHALLENGER]
    return RegisteredModel(
        run_id, experiment_id, cfg.model_name, version, aliases, promoted, reason
    )


# No automatic retry: a retry after a partial failure could register a second version.
register = task(name="register")(register_model)


# -- the registry as users see it (`aepipe models ...`) ----------------------------------


def registry_client(stores: Stores) -> Any:
    """An MLflow client on an existing store; a ConfigError (nothing created) when absent."""
    db = stores.tracking_uri.removeprefix("sqlite:///")
    if stores.tracking_uri.startswith("sqlite:///") and not Path(db).exists():
        raise ConfigError(f"no MLflow store at {db}; run `aepipe run` first or set AEPIPE_HOME")
    return configure_mlflow(stores)


def _get_model(client: Any, name: str) -> Any:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_registered_model(name)
    except MlflowException:
        names = [m.name for m in client.search_registered_models()]
        raise ConfigError(f"unknown registered model {name!r}; available: {names}") from None


def _get_version(client: Any, name: str, version: str | int) -> Any:
    from mlflow.exceptions import MlflowException

    _get_model(client, name)
    try:
        return client.get_model_version(name, str(version))
    except MlflowException:
        versions = sorted(int(v.version) for v in client.search_model_versions(f"name='{name}'"))
        raise ConfigError(
            f"model {name!r} has no version {version!r}; versions: {versions}"
        ) from None


def list_registered(stores: Stores) -> pd.DataFrame:
    """One row per registered model: versions, champion, challenger."""
    client = registry_client(stores)
    rows = []
    for m in client.search_registered_models():
        aliases = m.aliases or {}
        versions = client.search_model_versions(f"name='{m.name}'")
        rows.append(
            {
                "model": m.name,
                "versions": len(versions),
                "champion": str(aliases.get(CHAMPION, "")),
                "challenger": str(aliases.get(CHALLENGER, "")),
            }
        )
    return pd.DataFrame(rows, columns=["model", "versions", "champion", "challenger"])


COMPARE_METRICS = (
    EVAL_METRIC,
    "test_mse",
    "test_bce",
    "codes_logreg_accuracy",
    "codes_5nn_accuracy",
    "test_auroc",
    "best_epoch",
    "train_seconds",
)


def compare_versions(name: str, stores: Stores) -> pd.DataFrame:
    """A table of a model's versions with their metrics, aliases and promotion decisions."""
    client = registry_client(stores)
    model = _get_model(client, name)
    by_version: dict[str, list[str]] = {}
    for alias, v in (model.aliases or {}).items():
        by_version.setdefault(str(v), []).append(alias)
    rows = []
    for mv in sorted(client.search_model_versions(f"name='{name}'"), key=lambda v: int(v.version)):
        metrics = client.get_run(mv.run_id).data.metrics
        row: dict[str, Any] = {
            "version": int(mv.version),
            "aliases": ",".join(sorted(by_version.get(str(mv.version), []))),
        }
        row.update({k: metrics.get(k) for k in COMPARE_METRICS if k in metrics})
        row["decision"] = mv.tags.get("promotion.decision", "")
        row["reason"] = mv.tags.get("promotion.reason", "")
        rows.append(row)
    frame = pd.DataFrame(rows)
    metrics = [m for m in COMPARE_METRICS if m in frame.columns]
    return frame[["version", "aliases", *metrics, "decision", "reason"]]


def promote_manually(name: str, version: str | int, stores: Stores, note: str = "") -> str:
    """Give ``version`` the ``champion`` alias by hand, recorded like an automatic decision."""
    client = registry_client(stores)
    mv = _get_version(client, name, version)
    current = _champion(client, name)
    if current is not None and str(current.version) == str(mv.version):
        return f"{name} version {mv.version} is already the champion"
    client.set_registered_model_alias(name, CHAMPION, str(mv.version))
    aliases = client.get_registered_model(name).aliases or {}
    if str(aliases.get(CHALLENGER, "")) == str(mv.version):
        client.delete_registered_model_alias(name, CHALLENGER)
    previous = str(current.version) if current is not None else None
    reason = "manual promotion" + (f": {note}" if note else "")
    record_decision(
        client,
        name,
        int(mv.version),
        decision="promoted (manual)",
        metric="",
        challenger_value=None,
        champion_value=None,
        champion_version=previous,
        reason=reason,
    )
    return f"{name} version {mv.version} is now the champion (was {previous or 'none'})"
