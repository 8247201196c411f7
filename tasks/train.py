"""Train: fit the configured autoencoder on the normalized training split, measure it, save it."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from prefect import task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.context import TaskRunContext

import ae_models
from ae_models.preprocessing.normalizer import NORMALIZER_FILE, Normalizer
from ae_models.runtime import SCORING_PRECISION
from ae_models.scoring.scorer import resolve_score, score_rows
from ae_models.training.config import auto_code_size
from ae_models.training.fitting import fit_autoencoder
from ae_models.training.loop import CHECKPOINT
from ae_models.training.streaming import available_memory, source_bytes
from ae_models.vocabulary import TEST, TRAIN, VAL
from feature_store.schema import row_bytes
from stores import Stores
from stores import data as data_store
from stores.space import StoreFull, ensure_room, is_disk_full, local_folder
from tasks import registry
from tasks.config import ConfigError, PipelineConfig
from tasks.evaluation import plots
from tasks.evaluation.metrics import (
    anomaly_metrics,
    baseline_reconstruction,
    code_metrics,
    is_anomaly_label,
    read_label,
)
from tasks.io.splits import (
    SAMPLE_ROWS,
    load_split_labels,
    load_split_matrices,
    sample_splits,
    split_source,
)
from tasks.logs import run_logger
from tasks.stages import NormalizedData
from tasks.tracking import (
    MlflowLogger,
    configure_mlflow,
    ensure_experiment,
    experiment_name,
    git_commit,
)

log = logging.getLogger(__name__)


TRAIN_TIMEOUT_S = 6 * 3600
REQUEST_TAG = "aepipe.request_id"  # ties a delegated training run to the flow that asked
HANDOFF_MODEL, HANDOFF_PLOTS, HANDOFF_RESULT = (
    "handoff/model",
    "handoff/plots",
    "handoff/trained.json",
)


@dataclass(frozen=True)
class TrainedModel:
    """Reference to a trained model folder (weights + JSON) and what training measured."""

    model_dir: str
    plots_dir: str
    run_id: str
    model: str
    code_size: int
    threshold: float
    metrics: dict[str, float]
    history: list[dict[str, float]]
    device: str
    precision: str
    loss: str = "mse"  # the reconstruction loss trained on: bce (sigmoid head) or mse
    label_note: str = ""  # what the label was taken as (classes, anomalies), and why


def streams(data: NormalizedData, cfg: PipelineConfig) -> bool:
    """Whether training streams its rows from the normalized Parquet (they exceed the
    memory budget, or ``train.streaming`` says so), logged with the reason."""
    matrix = source_bytes(
        data.split_rows.get(TRAIN, 0) + data.split_rows.get(VAL, 0), len(data.features)
    )
    available = available_memory()
    streaming = cfg.train.streams(matrix, available)
    if streaming:
        _logger().info(
            "training streams its rows from %s by row groups: %.2f GB of training and "
            "validation rows against a memory budget of %.2f GB (train.streaming: %s)",
            data.path,
            matrix / 2**30,
            cfg.train.memory_budget(available) / 2**30,
            cfg.train.streaming,
        )
    return streaming


def draw_pictures(
    folder: Path,
    history: list[dict[str, float]],
    model: ae_models.Autoencoder,
    x_eval: np.ndarray,
    z_eval: np.ndarray,
    scores: np.ndarray,
    labels: np.ndarray | None,
    threshold: float,
    normalizer: Normalizer | None = None,
    train_mean: np.ndarray | None = None,
) -> list[Path]:
    """Loss curves, code histogram and projection, score histogram, and a grid of originals
    over reconstructions for images or, for tables (``normalizer`` with other than pixel
    columns), each source column's error beside the trivial one (``train_mean``), as PNG
    files in ``folder``."""
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    made = [
        plots.loss_curves(history, folder / "loss_curves.png"),
        plots.code_histogram(z_eval, folder / "code_activations.png"),
        plots.code_projection(z_eval, labels, folder / "code_projection.png"),
        plots.score_histogram(scores, threshold, folder / "recon_scores.png"),
    ]
    with torch.no_grad():
        recon = model.eval()(torch.from_numpy(x_eval[:2000])).recon.float().numpy()
    if normalizer is not None and not normalizer.fixed_scale and train_mean is not None:
        names, group = normalizer.source_groups()
        per_input = np.mean(np.square(x_eval[:2000] - recon), axis=0)
        trivial = np.mean(np.square(x_eval[:2000] - train_mean), axis=0)
        per_column = np.bincount(group, per_input, len(names))
        per_column_trivial = np.bincount(group, trivial, len(names))
        chart = folder / "column_errors.png"
        return [*made, plots.column_errors(names, per_column, per_column_trivial, chart)]
    grid = plots.reconstruction_grid(
        x_eval[:2000],
        recon,
        labels[:2000] if labels is not None else None,
        folder / "reconstructions.png",
    )
    return made + ([grid] if grid else [])


def build_model(
    cfg: PipelineConfig, input_dim: int, unit_range: bool = True
) -> ae_models.Autoencoder:
    """Create the configured variant for ``input_dim`` inputs: a sigmoid head with BCE when the
    normalized data lies in [0, 1], a linear head with MSE otherwise (unless ``model.params``
    sets ``output``). Bad settings become ConfigError."""
    params = {"output": "sigmoid" if unit_range else "linear", **cfg.model.params}
    code_size = cfg.model.code_size
    if code_size == "auto":
        code_size = auto_code_size(input_dim)
    elif code_size >= input_dim:
        raise ConfigError(
            f"model.code_size {code_size} must be smaller than the model's input width "
            f"({input_dim} columns after normalizing, one-hot levels counted); leave it "
            f"'auto' for {auto_code_size(input_dim)}"
        )
    try:
        return ae_models.create_model(
            cfg.model.name,
            seed=cfg.train.seed,
            input_dim=input_dim,
            code_size=code_size,
            **params,
        )
    except (TypeError, ValueError) as err:
        raise ConfigError(f"model {cfg.model.name!r}: {err}") from None


class _Progress:
    """Training callback: epoch lines in the run log and a Prefect progress artifact."""

    def __init__(self, epochs: int, every: int = 10) -> None:
        self.epochs, self.every = epochs, every
        self.artifact_id: Any = None
        self.logger = _logger()
        if TaskRunContext.get() is not None:
            self.artifact_id = create_progress_artifact(
                0.0, key="training-progress", description="Autoencoder training epochs done"
            )

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        if epoch == 1 or epoch % self.every == 0 or epoch == self.epochs:
            self.logger.info(
                "epoch %d/%d train_loss=%.5f val_loss=%.5f lr=%.2g",
                epoch,
                self.epochs,
                logs["train_loss"],
                logs["val_loss"],
                logs["lr"],
            )
        if self.artifact_id is not None:
            update_progress_artifact(self.artifact_id, 100.0 * epoch / self.epochs)


class _Publish:
    """Training callback: each epoch's checkpoint uploaded to an object-store ``AEPIPE_DATA``,
    so a run killed on one machine resumes on another."""

    def __init__(self, stores: Stores, folder: Path) -> None:
        self.stores, self.path = stores, folder / CHECKPOINT

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        data_store.share(self.stores, self.path)


def _logger() -> Any:
    return run_logger(log)


def checkpoint_dir(data: NormalizedData, cfg: PipelineConfig, stores: Stores) -> Path:
    """Where training checkpoints go: one folder per (data, model, training) combination, so
    a run that was killed resumes when run again with the same settings."""
    key = hashlib.sha256(
        json.dumps(
            [
                data_store.location(stores, data.path),  # the same key on every machine
                data.rows,
                cfg.model.model_dump(mode="json"),
                cfg.train.to_dict(),
            ],
            sort_keys=True,
        ).encode()
    ).hexdigest()[:16]
    return stores.models_dir / cfg.dataset / "checkpoints" / key


def start_run(
    cfg: PipelineConfig, stores: Stores, request_id: str | None = None
) -> tuple[Any, str]:
    """Open the MLflow run of this training (params and tags now, metrics as they come)."""
    client = configure_mlflow(stores)
    experiment_id = ensure_experiment(experiment_name(cfg.dataset), stores)
    tags = {
        "aepipe.source": cfg.source.path,
        "aepipe.model": cfg.model.name,
        registry.DATASET_TAG: cfg.dataset,
    }
    if request_id:
        tags[REQUEST_TAG] = request_id
    commit = git_commit()
    if commit:
        tags["aepipe.git_commit"] = commit
    run = client.create_run(experiment_id, tags=tags)
    params = list(cfg.flat_params().items())
    from mlflow.entities import Param

    for start in range(0, len(params), 100):
        client.log_batch(
            run.info.run_id, params=[Param(k, v) for k, v in params[start : start + 100]]
        )
    # the config whole (params are flattened strings): what a drift retrain reuses
    client.log_dict(run.info.run_id, cfg.model_dump(mode="json"), registry.CONFIG_ARTIFACT)
    return client, run.info.run_id


def drift_reference(
    normalizer: Normalizer,
    train_inputs: np.ndarray,
    train_codes: np.ndarray,
    held_out_calibrated: np.ndarray,
    held_out_flagged: np.ndarray,
) -> dict[str, Any]:
    """What a later scoring run's drift check compares its rows with (``model.json``'s
    ``"drift"``): the source columns' distributions and the codes from the training rows,
    the calibrated scores and flagged share from rows held out of training. Pixel columns
    of images get no per-column reference (the scores and codes cover them)."""
    from ae_models.scoring.drift import build_reference

    columns, position = [], 0
    for spec in normalizer.columns:
        index = list(range(position, position + len(spec.outputs)))
        position += len(spec.outputs)
        if not normalizer.fixed_scale:
            columns.append({"name": spec.source, "kind": spec.kind, "index": index})
    return build_reference(
        held_out_calibrated, held_out_flagged, train_inputs, columns, train_codes
    )


TRAINED_RECORD = "trained.json"  # in the checkpoint folder: the last model trained there


def unregistered_training(record: Path, stores: Stores) -> TrainedModel | None:
    """The model a run with the same settings trained and saved but never registered (its
    tracking server went away between, say): from ``record``, when the model folder is
    still there and its MLflow run is active with no registered version; else None."""
    if not record.is_file():
        return None
    try:
        trained = TrainedModel(**json.loads(record.read_text()))
    except (ValueError, TypeError):  # unreadable, or written by another aepipe
        return None
    if not Path(trained.model_dir).is_dir():
        return None
    client = configure_mlflow(stores)
    try:
        run = client.get_run(trained.run_id)
        registered = client.search_model_versions(f"run_id = '{trained.run_id}'")
    except Exception:  # another tracking store, the run deleted: train anew
        return None
    if run.info.lifecycle_stage != "active" or registered:
        return None
    return trained


PICTURES_BYTES = 4 << 20  # the run's PNG pictures, and the pyfunc's code in MLflow


def check_room(model: ae_models.Autoencoder, data: NormalizedData, stores: Stores) -> None:
    """Before training: the models folder has room for the checkpoints and the saved model,
    a local MLflow store for the logged model, and a local warehouse for the feature rows
    (a :class:`~stores.space.StoreFull` naming the first that lacks it)."""
    weights = 4 * sum(p.numel() for p in model.parameters())
    # checkpoint: weights, best weights and Adam's two moments; then the saved model
    ensure_room(stores.models_dir, 5 * weights + PICTURES_BYTES, "models", "training")
    if stores.tracking_uri.startswith("sqlite:"):
        ensure_room(stores.artifact_root, weights + PICTURES_BYTES, "MLflow artifacts", "the model")
    ensure_room(
        local_folder(stores.warehouse),
        data.rows * row_bytes(model.config.code_size),
        "warehouse",
        f"writing {data.rows} feature rows",
    )


@dataclass(frozen=True)
class _Splits:
    """The rows a training run uses: every split as a matrix (whole, or samples of at most
    SAMPLE_ROWS when the rows stay in the file), what the loop trains on and validates on
    (the matrices, or streamable sources), the rows the scorer is fitted on (None: those it
    trained on) and the labels when there are any."""

    parts: dict[str, np.ndarray]
    x_train: Any
    x_val: Any
    score_on: np.ndarray | None
    labels: dict[str, np.ndarray] | None

    @property
    def eval_split(self) -> str:
        """Tiny data sets may have no test (or even validation) rows: measure on what there is."""
        return next(s for s in (TEST, VAL, TRAIN) if len(self.parts[s]))


def _splits(data: NormalizedData, cfg: PipelineConfig, streaming: bool) -> _Splits:
    """The training rows of ``data``: in memory, or left in the file with samples here."""
    if streaming or cfg.train.strategy == "ddp":  # the rows stay in the file: samples here
        parts, labels = sample_splits(data, SAMPLE_ROWS, cfg.train.seed)
        x_val = split_source(data, VAL) if data.split_rows.get(VAL) else None
        score_on = np.vstack([parts[TRAIN], parts[VAL]])
        return _Splits(parts, split_source(data, TRAIN), x_val, score_on, labels)
    parts = load_split_matrices(data)
    labels = load_split_labels(data) if data.has_label else None
    return _Splits(parts, parts[TRAIN], parts[VAL], None, labels)


def _train_settings(data: NormalizedData, cfg: PipelineConfig, stores: Stores) -> Any:
    """``cfg.train`` with its checkpoint folder resolved: the data set's own, or the one
    configured, relative to the models folder (check_stores refused any path outside)."""
    folder = cfg.train.checkpoint_dir
    where = checkpoint_dir(data, cfg, stores) if folder is None else stores.under_models(folder)
    return dataclasses.replace(cfg.train, checkpoint_dir=str(where))


def _measure(
    model: ae_models.Autoencoder,
    fit: Any,
    splits: _Splits,
    cfg: PipelineConfig,
    device: str,
) -> tuple[dict[str, float], Any, str]:
    """The model's figures on its evaluation split (errors, the trivial baseline, and with
    labels the codes' and scores' worth), the split's scored rows, and a note on the labels."""
    result, scorer, ev = fit.result, fit.scorer, splits.eval_split
    parts, labels = splits.parts, splits.labels
    evaluated = score_rows(
        model, parts[ev], scorer, device=device, precision=SCORING_PRECISION, mse=True, bce=True
    )  # one pass: codes, scores and both plain errors of the evaluation split
    metrics = {
        "test_mse": float(evaluated.mse.mean()),
        "test_bce": float(evaluated.bce.mean()),
        "best_val_loss": float(result.best_val_loss),
        "final_train_loss": float(result.history[-1]["train_loss"]),
        "best_epoch": float(result.best_epoch),
        "epochs_run": float(len(result.history)),
        "batch_size": float(result.batch_size),
        "train_seconds": float(result.seconds),
        "threshold": scorer.threshold,
    }
    metrics.update(baseline_reconstruction(parts[TRAIN], parts[ev]))
    loss = model.config.loss_name  # what the model was trained to lower: bce or mse
    # below 1: reconstructs better than each column's training mean; 1 or more: learned nothing
    metrics["recon_vs_baseline"] = metrics[f"test_{loss}"] / max(metrics[f"baseline_{loss}"], 1e-12)
    label_note = ""
    if labels is not None:
        y_fit = np.concatenate([labels[TRAIN], labels[VAL]])
        y_all = np.concatenate([y_fit, labels[ev]])
        name = repr(cfg.source.label) if cfg.source.label else "the source's own"
        kind, label_note = read_label(y_all, cfg.source.label_kind, name)
        if kind == "class":
            metrics.update(code_metrics(fit.fitted.codes, y_fit, evaluated.codes, labels[ev]))
        if kind == "anomaly" and is_anomaly_label(labels[ev]):
            metrics.update(anomaly_metrics(evaluated.scores, labels[ev]))
    return metrics, evaluated, label_note


def _save(
    model: ae_models.Autoencoder,
    fit: Any,
    evaluated: Any,
    metrics: dict[str, float],
    splits: _Splits,
    data: NormalizedData,
    normalizer: Normalizer,
    cfg: PipelineConfig,
    stores: Stores,
) -> tuple[Path, Path]:
    """Write the model folder (weights, config, scorer, normalizer, drift reference) and its
    pictures; their paths."""
    scorer = fit.scorer
    threshold = scorer.threshold
    train_rows, ev = splits.parts[TRAIN], splits.eval_split
    stamp = time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:8]
    folder = stores.models_dir / cfg.dataset / stamp
    reference = drift_reference(
        normalizer,
        train_rows,
        fit.fitted.codes,
        scorer.calibration.calibrate(evaluated.scores),
        evaluated.scores > threshold,
    )
    extra = {
        "threshold": threshold,
        "contamination": cfg.contamination,
        "score": scorer.to_dict(),
        "features": data.features,
        "metrics": metrics,
        "train": cfg.train.to_dict(),
        "drift": reference,
    }
    ae_models.save_model(model, folder, extra=extra)
    scorer.save_files(folder)  # an ensemble scorer's training codes and isolation forest
    (folder / NORMALIZER_FILE).write_bytes(Path(data.spec_path).read_bytes())
    plots_dir = folder.with_name(f"{folder.name}-plots")
    labels = splits.labels[ev] if splits.labels is not None else None
    draw_pictures(
        plots_dir,
        fit.result.history,
        model,
        splits.parts[ev],
        evaluated.codes,
        evaluated.scores,
        labels,
        threshold,
        normalizer,
        train_rows.mean(axis=0),
    )
    return folder, plots_dir


def _fit(
    model: ae_models.Autoencoder,
    splits: _Splits,
    train_cfg: Any,
    cfg: PipelineConfig,
    stores: Stores,
    run: tuple[Any, str],
    streaming: bool,
    data_kind: str,
) -> Any:
    """Train and fit the scorer, the losses going to the MLflow run; the run marked failed
    when training fails, and a full disk named."""
    client, run_id = run
    try:
        fit = fit_autoencoder(
            model,
            splits.x_train,
            splits.x_val,
            train_cfg,
            score=cfg.score,
            contamination=cfg.contamination,
            callbacks=[
                _Progress(cfg.train.epochs),
                MlflowLogger(client, run_id),
                _Publish(stores, Path(train_cfg.checkpoint_dir)),
            ],
            # scored the way the feature table will be (SCORING_PRECISION): the threshold fits
            score_precision=SCORING_PRECISION,
            score_on=splits.score_on,
            streaming=streaming,
            data=data_kind,
        )
    except BaseException as err:
        client.set_terminated(run_id, status="FAILED")
        if is_disk_full(err):  # the disk filled while checkpointing: say which store
            raise StoreFull(
                f"no room in the models store {stores.models_dir} for a training checkpoint "
                f"({err}); free some space there or set AEPIPE_HOME to a larger disk"
            ) from err
        raise
    tags = {
        "aepipe.device": fit.result.device,
        "aepipe.precision": fit.result.precision,
        "aepipe.rows": "streamed" if streaming else "in memory",
    }
    if train_cfg.strategy == "ddp":
        tags["aepipe.strategy"] = "ddp"
    for key, value in tags.items():
        client.set_tag(run_id, key, value)
    return fit


def train_autoencoder(
    data: NormalizedData, cfg: PipelineConfig, stores: Stores, request_id: str | None = None
) -> TrainedModel:
    """Train on the train split (early stopping on val), score test, save weights + config.

    Losses go to a new MLflow run as training goes; the register stage finishes that run.
    With a ``request_id`` (training handed to the ``train-autoencoder`` deployment) the run is
    tagged with it and carries the model folder, pictures and this result as artifacts, so the
    flow that asked can pick them up from MLflow wherever the training ran.
    """
    data_store.need(stores, data)  # on an object-store AEPIPE_DATA: from there
    if data.split_rows.get(TRAIN, 0) == 0:
        raise ConfigError("the training split is empty")
    streaming = streams(data, cfg)
    splits = _splits(data, cfg, streaming)
    normalizer = Normalizer.load(data.spec_path)
    data_kind = "pixels" if normalizer.fixed_scale else "table"  # for score: auto
    model = build_model(cfg, len(data.features), normalizer.unit_range)
    train_cfg = _train_settings(data, cfg, stores)
    try:  # a score kind the model cannot give (elbo without a VAE): before any work
        resolve_score(cfg.score, model.config.output, model.model_name, data_kind)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    data_store.present(stores, train_cfg.checkpoint_dir)  # resume where another machine stopped
    record = Path(train_cfg.checkpoint_dir) / TRAINED_RECORD
    pending = unregistered_training(record, stores)
    if pending is not None:
        _logger().warning(
            "the model MLflow run %s trained with these settings was never registered (the "
            "run stopped before registration); registering it now, not training again",
            pending.run_id,
        )
        return pending
    check_room(model, data, stores)  # before the MLflow run: a full disk leaves no trace
    client, run_id = start_run(cfg, stores, request_id)
    fit = _fit(model, splits, train_cfg, cfg, stores, (client, run_id), streaming, data_kind)
    metrics, evaluated, label_note = _measure(model, fit, splits, cfg, train_cfg.device)
    folder, plots_dir = _save(model, fit, evaluated, metrics, splits, data, normalizer, cfg, stores)
    result = fit.result
    trained = TrainedModel(
        str(folder),
        str(plots_dir),
        run_id,
        cfg.model.name,
        model.config.code_size,
        fit.scorer.threshold,
        metrics,
        result.history,
        result.device,
        result.precision,
        model.config.loss_name,
        label_note,
    )
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps(dataclasses.asdict(trained)))  # until it is registered
    data_store.share(stores, folder, record)
    if request_id:
        client.log_artifacts(run_id, str(folder), HANDOFF_MODEL)
        if plots_dir.is_dir():
            client.log_artifacts(run_id, str(plots_dir), HANDOFF_PLOTS)
        client.log_dict(run_id, dataclasses.asdict(trained), HANDOFF_RESULT)
    return trained


def trained_from_mlflow(request_id: str, cfg: PipelineConfig, stores: Stores) -> TrainedModel:
    """The TrainedModel of the training run tagged ``request_id``, its model folder and
    pictures downloaded from MLflow into this machine's model store."""
    import mlflow

    client = configure_mlflow(stores)
    experiment_id = ensure_experiment(experiment_name(cfg.dataset), stores)
    runs = client.search_runs([experiment_id], f"tags.`{REQUEST_TAG}` = '{request_id}'")
    if not runs:
        raise RuntimeError(f"no MLflow training run is tagged {REQUEST_TAG}={request_id}")
    run_id = runs[0].info.run_id
    record = mlflow.artifacts.load_dict(f"runs:/{run_id}/{HANDOFF_RESULT}")
    local = stores.models_dir / cfg.dataset / f"remote-{run_id}"
    local.mkdir(parents=True, exist_ok=True)
    model_dir = mlflow.artifacts.download_artifacts(
        run_id=run_id, artifact_path=HANDOFF_MODEL, dst_path=str(local)
    )
    plots_dir = local / HANDOFF_PLOTS
    if any(a.path == HANDOFF_PLOTS for a in client.list_artifacts(run_id, "handoff")):
        mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path=HANDOFF_PLOTS, dst_path=str(local)
        )
    return TrainedModel(**{**record, "model_dir": model_dir, "plots_dir": str(plots_dir)})


train = task(name="train", timeout_seconds=TRAIN_TIMEOUT_S)(train_autoencoder)


def train_with_deployment(
    data: NormalizedData, cfg: PipelineConfig, stores: Stores
) -> TrainedModel:
    """Hand training to the ``cfg.train_deployment`` Prefect deployment (say, on the GPU
    pool), wait for its flow run, and pick its result up from MLflow."""
    from prefect.deployments import run_deployment

    request_id = uuid.uuid4().hex
    run = run_deployment(
        name=cfg.train_deployment,
        parameters={  # its files by their object-store URIs, where AEPIPE_DATA is one
            "data": dataclasses.asdict(
                dataclasses.replace(
                    data,
                    path=data_store.location(stores, data.path),
                    spec_path=data_store.location(stores, data.spec_path),
                )
            ),
            "config": cfg.model_dump(mode="json"),
            "request_id": request_id,
        },
        timeout=TRAIN_TIMEOUT_S,
    )
    if run.state is None or not run.state.is_completed():
        state = run.state.name if run.state is not None else "unknown"
        raise RuntimeError(
            f"training deployment {cfg.train_deployment!r} run {run.name!r} ended {state}"
        )
    return trained_from_mlflow(request_id, cfg, stores)


train_elsewhere = task(name="train-on-deployment", timeout_seconds=TRAIN_TIMEOUT_S)(
    train_with_deployment
)
