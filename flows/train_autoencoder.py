"""Training as its own flow, so it can run as a deployment on a GPU work pool."""

from __future__ import annotations

from prefect import flow

from tasks.config import PipelineConfig
from tasks.credentials import run_stores
from tasks.normalize import NormalizedData
from tasks.train import TrainedModel, train


@flow(name="train-autoencoder", log_prints=True)
def train_autoencoder_flow(
    data: NormalizedData, config: PipelineConfig, request_id: str | None = None
) -> TrainedModel:
    """Train the configured autoencoder on already normalized data (a path both machines see).

    ``request_id`` tags the MLflow run, whose artifacts then carry the trained model back to
    the ``reduce-features`` run that asked for it.
    """
    return train(data, config, run_stores(config.home), request_id)
