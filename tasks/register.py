"""Register: finish the training run in MLflow, register a version, promote the better model.

Every new version gets the alias ``challenger``. Promotion scores the challenger and the
current ``champion`` on the same fixed evaluation split (the data set's test split, as raw
rows through each model's own normalizer) with a configurable metric and direction; the
winner holds ``champion``. Each decision, automatic or manual, is recorded as tags on the
version: when, which metric, both values, and why.
"""

from __future__ import annotations

import contextlib
import json
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from prefect import task

import ae_models
from ae_models.preprocessing.tensor_column import to_wide
from ae_models.vocabulary import (
    ENTITY_KEY,
    EVENT_TIMESTAMP,
    LABEL,
    RECON_ERROR,
    RECON_MSE,
    SPLIT,
    TEST,
    VAL,
)
from stores import Stores
from tasks.config import ConfigError, PipelineConfig
from tasks.registry import (
    CHALLENGER,
    CHAMPION,
    DATASET_TAG,
    EVAL_METRIC,
    check_model_binding,
    load_version_model,
    make_champion,
    record_decision,
    register_challenger,
    registry_lock,
    version_by_alias,
)
from tasks.stages import IngestResult, NormalizedData
from tasks.tracking import TrackingUnavailable, check_tracking, configure_mlflow
from tasks.train import TrainedModel

LOWER_IS_BETTER = ("mse", "bce", "loss", "error")
PYFUNC_FILE = Path(__file__).with_name("pyfunc_model.py")
# what the served model imports (tasks/pyfunc_model.py and ae_models), pinned to the versions
# it was trained with, so `mlflow models serve` and `build-docker` rebuild the same set later
SERVED_PACKAGES = ("mlflow", "torch", "numpy", "pandas", "pyarrow", "scipy", "scikit-learn")


def pip_requirements() -> list[str]:
    """``name==version`` of each package the served model needs, as installed now. A local
    build tag (torch's ``+cpu``) is dropped: ``torch==2.13.0`` matches any build of it."""
    return [f"{name}=={metadata.version(name).split('+')[0]}" for name in SERVED_PACKAGES]


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


def nothing_learned(trained: TrainedModel) -> str | None:
    """Why a model must not become champion because it reconstructs the test rows no better
    than each column's training mean (``recon_vs_baseline`` >= 1), or None when it learned."""
    m = trained.metrics
    if m.get("recon_vs_baseline", 0.0) < 1.0:
        return None
    loss = trained.loss
    return (
        f"not promoted: it learned nothing (test {loss.upper()} {m[f'test_{loss}']:.5g} is no "
        f"better than predicting each column's training mean, {m[f'baseline_{loss}']:.5g}); "
        "train longer, with smaller batches, or on more rows"
    )


def evaluation_rows(ingested: IngestResult, data: NormalizedData) -> pd.DataFrame:
    """Raw rows of the fixed evaluation split (the test split, its first ``EVAL_MAX_ROWS``
    rows at most), as users would send them."""
    splits = pq.read_table(data.path, columns=[SPLIT]).column(SPLIT).to_numpy(zero_copy_only=False)
    which = TEST if (splits == TEST).any() else VAL
    picked = np.flatnonzero(splits == which)[:EVAL_MAX_ROWS]
    raw = pq.read_table(ingested.path).drop_columns([EVENT_TIMESTAMP]).take(picked)
    rows = to_wide(raw, ingested.features).to_pandas()  # pixels a column each, as users send
    return rows.drop(columns=[LABEL], errors="ignore")


def mean_score(predict: Any, rows: pd.DataFrame) -> float:
    """Mean reconstruction MSE that ``predict`` (raw rows -> feature rows) gives ``rows``:
    ``recon_mse``, comparable whatever score kind each model flags anomalies with (models
    logged before it existed give their ``recon_error``, which was the MSE)."""
    out = predict(rows)
    return float(np.mean(out[RECON_MSE] if RECON_MSE in out else out[RECON_ERROR]))


def optional_columns(schema: Any, names: tuple[str, ...]) -> Any:
    """``schema`` (an MLflow input schema) with the columns ``names`` marked optional: the
    served model passes an entity id through when it is given one and numbers rows if not."""
    from mlflow.types import ColSpec, Schema

    return Schema(
        [ColSpec(c.type, c.name, required=False) if c.name in names else c for c in schema.inputs]
    )


def training_dataset(cfg: PipelineConfig, ingested: IngestResult, schema: Any) -> Any:
    """The ingested table as an MLflow dataset: its source, content digest, the raw columns'
    schema and its row count (metadata only: the rows stay in the data store)."""
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    class IngestedDataset(MetaDataset):
        @property
        def profile(self) -> dict[str, int]:
            return {"num_rows": ingested.rows, "num_elements": ingested.rows * len(schema.inputs)}

        def to_dict(self) -> dict[str, str]:
            return super().to_dict() | {"profile": json.dumps(self.profile)}

    with warnings.catch_warnings():
        # MLflow registers its local source type twice and warns that a path is ambiguous
        warnings.filterwarnings("ignore", "The specified dataset source can be interpreted")
        source = resolve_dataset_source(cfg.source.path)
    return IngestedDataset(
        source, name=cfg.dataset, digest=ingested.content_digest[:16], schema=schema
    )


@contextlib.contextmanager
def kept_when_tracking_goes(trained: TrainedModel, stores: Stores) -> Iterator[None]:
    """A failure of the block while the tracking server does not answer becomes one line
    (:class:`~tasks.tracking.TrackingUnavailable`) saying the trained model is kept."""
    try:
        yield
    except ConfigError:
        raise
    except Exception as err:
        try:
            check_tracking(stores)
        except TrackingUnavailable as down:
            raise TrackingUnavailable(
                f"{down} (it stopped answering during registration); the trained model is "
                f"kept ({trained.model_dir}, MLflow run {trained.run_id}) and the next run "
                "with the same settings registers it without training again"
            ) from err
        raise


def register_model(
    trained: TrainedModel,
    ingested: IngestResult,
    data: NormalizedData,
    cfg: PipelineConfig,
    stores: Stores,
) -> RegisteredModel:
    """Finish the training run (metrics, pictures, dataset, pyfunc model), register a version as
    ``challenger``, and promote it to ``champion`` if it wins on the evaluation split.

    A tracking server that stops answering meanwhile fails it in one line
    (:class:`~tasks.tracking.TrackingUnavailable`); the trained model stays, and the next run
    with the same settings registers it without training again."""
    with kept_when_tracking_goes(trained, stores):
        from tasks.pyfunc_model import AutoencoderPyfunc

        client = configure_mlflow(stores)
        rows = evaluation_rows(ingested, data)
        predictor = AutoencoderPyfunc().load_folder(trained.model_dir)
        challenger_eval = mean_score(lambda r: predictor.predict(None, r), rows)
        metric = cfg.promotion_metric
        measured = {**trained.metrics, EVAL_METRIC: challenger_eval}
        if metric not in measured:  # checked before anything is registered
            raise ConfigError(
                f"promotion_metric {metric!r} is not measured for this run; use one of "
                f"{sorted(measured)}"
            )
        run_id, experiment_id, model_uri = _finish_run(
            trained, measured, predictor, rows.head(5), ingested, cfg
        )
        # registering, comparing with the champion and promoting is a read-then-write: runs
        # sharing this home take turns, so two at once cannot both replace the champion
        with registry_lock(stores, cfg.model_name):
            check_model_binding(cfg.model_name, cfg.dataset, client)  # checked before work too
            version = register_challenger(client, model_uri, cfg.model_name)
            client.set_registered_model_tag(cfg.model_name, DATASET_TAG, cfg.dataset)
            promoted, reason = _promote(
                client, trained, version, float(measured[metric]), rows, cfg
            )
        aliases = [CHAMPION] if promoted else [CHALLENGER]
        return RegisteredModel(
            run_id, experiment_id, cfg.model_name, version, aliases, promoted, reason
        )


def _finish_run(
    trained: TrainedModel,
    measured: dict[str, float],
    predictor: Any,
    example: pd.DataFrame,
    ingested: IngestResult,
    cfg: PipelineConfig,
) -> tuple[str, str, str]:
    """Log the metrics, pictures, training data set and the pyfunc model on the run the
    train stage opened (it logged params and per-epoch losses); the run's id, its
    experiment's and the logged model's URI."""
    import mlflow
    from mlflow.models import infer_signature

    with mlflow.start_run(run_id=trained.run_id) as run, warnings.catch_warnings():
        # pixel columns are integers; MLflow hints that integers cannot hold missing values
        warnings.filterwarnings("ignore", "Hint: Inferred schema contains integer column")
        mlflow.log_metrics(measured)
        if Path(trained.plots_dir).is_dir():
            mlflow.log_artifacts(trained.plots_dir, artifact_path="plots")
        signature = infer_signature(example, predictor.predict(None, example))
        signature.inputs = optional_columns(signature.inputs, (ENTITY_KEY,))
        mlflow.log_input(training_dataset(cfg, ingested, signature.inputs), context="training")
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(PYFUNC_FILE),
            artifacts={"model_dir": trained.model_dir},
            # the served model's only code: the network and its preprocessing
            code_paths=[str(Path(ae_models.__file__).parent)],
            signature=signature,
            input_example=example,
            pip_requirements=pip_requirements(),
        )
        return run.info.run_id, run.info.experiment_id, info.model_uri


def _promote(
    client: Any,
    trained: TrainedModel,
    version: str,
    challenger_value: float,
    rows: pd.DataFrame,
    cfg: PipelineConfig,
) -> tuple[bool, str]:
    """Compare the new version with the champion on ``cfg.promotion_metric``, crown it when
    it wins (never when it learned nothing) and record the decision; whether it was
    promoted, and why. Called under the registry lock."""
    metric = cfg.promotion_metric
    current = version_by_alias(client, cfg.model_name, CHAMPION)
    champion_value: float | None = None
    reason_prefix = ""
    if current is not None:
        if metric == EVAL_METRIC:
            champ = _load_champion_or_fail(client, cfg.model_name, current, version)
            try:
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
    learned_nothing = nothing_learned(trained)
    if learned_nothing:  # never crowned, not even as the first version
        promoted, reason = False, learned_nothing
    if promoted:
        make_champion(client, cfg.model_name, version)
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
    return promoted, reason


CHAMPION_LOAD_ATTEMPTS = 3  # a transient MLflow or artifact error: tried again, 1 s then 2 s


def _load_champion_or_fail(client: Any, name: str, current: Any, challenger: int) -> Any:
    """The champion's pyfunc model, loaded for the comparison; a transient error is tried
    again, and a champion that still cannot be loaded fails the registration in one line,
    the new version staying ``challenger`` (recorded on it): a model that was never compared
    is not crowned."""
    for attempt in range(CHAMPION_LOAD_ATTEMPTS):
        try:
            return load_version_model(name, current.version)
        except Exception as err:  # MLflow raises several types for a store or file gone
            if attempt < CHAMPION_LOAD_ATTEMPTS - 1:
                time.sleep(1 + attempt)
                continue
            first = str(err).splitlines()[0] if str(err) else type(err).__name__
            reason = (
                f"the champion (version {current.version}) could not be loaded to compare "
                f"({CHAMPION_LOAD_ATTEMPTS} attempts): {first[:300]}; version {challenger} "
                "stays challenger"
            )
            record_decision(
                client,
                name,
                challenger,
                decision="error",
                metric=EVAL_METRIC,
                challenger_value=None,
                champion_value=None,
                champion_version=str(current.version),
                reason=reason,
            )
            raise ChampionUnavailable(f"{name}: {reason}") from None
    raise AssertionError("unreachable")


class ChampionUnavailable(RuntimeError):
    """The champion could not be loaded for the comparison; the message is one line."""


# No automatic retry: a retry after a partial failure could register a second version.
register = task(name="register")(register_model)
