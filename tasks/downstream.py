"""Downstream use: a classifier on the feature table, against the same one on raw features and PCA.

The question a feature table must answer for its readers: does a model trained on the latent
codes do as well as one trained on the full normalized features, and better than PCA with as
many components? One logistic regression (standardized inputs) on each, fitted on the data
set's training split and scored on its test split; the result is logged to MLflow.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from prefect import task

from ae_models.preprocessing.tensor_column import FEATURES, batch_matrix
from ae_models.vocabulary import (
    ENTITY_KEY,
    EVENT_TIMESTAMP,
    LABEL,
    LATENT_PREFIX,
    SPLIT,
    TEST,
    TRAIN,
)
from feature_store import read_features
from stores import Stores
from tasks.config import ConfigError, PipelineConfig
from tasks.registry import CHAMPION
from tasks.stages import NormalizedData
from tasks.tracking import configure_mlflow, ensure_experiment, experiment_name


@dataclass(frozen=True)
class DownstreamReport:
    """Test accuracy of the same classifier on three inputs of one data set."""

    table: str
    model_version: int
    code_size: int
    train_rows: int
    test_rows: int
    accuracy: dict[str, float]
    run_id: str

    def to_text(self) -> str:
        """A small table for the terminal."""
        lines = [
            f"logistic regression on {self.table} (model v{self.model_version}): "
            f"{self.train_rows} train / {self.test_rows} test rows",
        ]
        width = max(len(k) for k in self.accuracy)
        lines += [f"  {k:<{width}}  accuracy {v:.4f}" for k, v in self.accuracy.items()]
        return "\n".join(lines)


def _classifier(seed: int):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=seed))


def train_downstream_model(
    data: NormalizedData,
    cfg: PipelineConfig,
    stores: Stores,
    model_version: str | int = CHAMPION,
) -> DownstreamReport:
    """Fit the classifier on the feature table's codes, on the normalized features, and on PCA
    of them (as many components as the code has), using the data set's train/test split."""
    from sklearn.decomposition import PCA

    if not data.has_label:
        raise ConfigError(
            f"data set {cfg.dataset!r} has no label column to train a classifier on; "
            "set source.label"
        )
    features = read_features(cfg.dataset, model_version, home=stores)
    latent = [c for c in features.columns if c.startswith(LATENT_PREFIX)]
    version = int(features["model_version"].iloc[0])
    table = pq.read_table(data.path, columns=[ENTITY_KEY, EVENT_TIMESTAMP, SPLIT, LABEL, FEATURES])
    base = table.select([ENTITY_KEY, EVENT_TIMESTAMP, SPLIT, LABEL]).to_pandas()
    # the key: (id, event time) when the source has versions over time, else the id
    key = [ENTITY_KEY, EVENT_TIMESTAMP] if cfg.source.timestamp else [ENTITY_KEY]
    codes = features[[*key, *latent]].drop_duplicates(key, keep="last")
    for frame in (base, codes):
        frame[ENTITY_KEY] = frame[ENTITY_KEY].astype(str)
        if EVENT_TIMESTAMP in key:
            frame[EVENT_TIMESTAMP] = pd.to_datetime(frame[EVENT_TIMESTAMP], utc=True).dt.as_unit(
                "us"
            )
    joined = base.merge(codes, on=key, how="left", validate="one_to_one")
    have = joined[latent].notna().all(axis=1).to_numpy() & joined[LABEL].notna().to_numpy()
    if not have.any():
        raise ConfigError(
            f"feature table {cfg.dataset!r} v{version} shares no entity ids with the data set"
        )
    x_raw = batch_matrix(table)
    split = joined[SPLIT].to_numpy()
    train, test = have & (split == TRAIN), have & (split == TEST)
    if not train.any() or not test.any():
        raise ConfigError(f"data set {cfg.dataset!r} needs labelled rows in train and test splits")
    y = joined[LABEL].astype(str).to_numpy()
    z = joined[latent].to_numpy(np.float32)
    seed = cfg.train.seed
    pca = PCA(n_components=min(len(latent), x_raw.shape[1]), random_state=seed)
    p_train = pca.fit_transform(x_raw[train])
    p_test = pca.transform(x_raw[test])
    accuracy = {
        "latent codes": _fit_score(z[train], y[train], z[test], y[test], seed),
        "normalized features": _fit_score(x_raw[train], y[train], x_raw[test], y[test], seed),
        f"PCA ({len(latent)} components)": _fit_score(p_train, y[train], p_test, y[test], seed),
    }
    run_id = _log(cfg, stores, version, accuracy, int(train.sum()), int(test.sum()))
    return DownstreamReport(
        cfg.dataset, version, len(latent), int(train.sum()), int(test.sum()), accuracy, run_id
    )


def _fit_score(
    x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray, seed: int
) -> float:
    clf = _classifier(seed).fit(x_train, y_train)
    return float((clf.predict(x_test) == y_test).mean())


def _log(
    cfg: PipelineConfig,
    stores: Stores,
    version: int,
    accuracy: dict[str, float],
    train_rows: int,
    test_rows: int,
) -> str:
    """Record the comparison as an MLflow run beside the model's training runs."""
    import mlflow

    configure_mlflow(stores)
    experiment_id = ensure_experiment(experiment_name(cfg.dataset), stores)
    keys = {"latent codes": "latent", "normalized features": "normalized"}
    with mlflow.start_run(
        experiment_id=experiment_id,
        run_name=f"downstream-v{version}",
        tags={"aepipe.kind": "downstream", "aepipe.model_version": str(version)},
    ) as run:
        mlflow.log_params(
            {"model_name": cfg.model_name, "model_version": version, "classifier": "logreg"}
        )
        mlflow.log_metrics(
            {f"accuracy_{keys.get(k, 'pca')}": v for k, v in accuracy.items()}
            | {"train_rows": train_rows, "test_rows": test_rows}
        )
        return run.info.run_id


train_downstream = task(name="train-downstream")(train_downstream_model)


def downstream_report(report: DownstreamReport, dataset: str) -> None:
    """The downstream check's result as a Prefect artifact on its flow run (what the CLI
    prints), under the key ``aepipe-downstream-<dataset>``."""
    from prefect.artifacts import create_markdown_artifact

    key = "aepipe-downstream-" + dataset.replace("_", "-").lower()
    create_markdown_artifact(f"```\n{report.to_text()}\n```", key=key)
