"""Training as its own flow, so it can run as a deployment on a GPU work pool."""

from __future__ import annotations

import dataclasses

from prefect import flow

from stores.data import arrive
from tasks.config import PipelineConfig
from tasks.credentials import run_stores
from tasks.stages import NormalizedData
from tasks.train import TrainedModel, train


@flow(name="train-autoencoder", log_prints=True)
def train_autoencoder_flow(
    data: NormalizedData, config: PipelineConfig, request_id: str | None = None
) -> TrainedModel:
    """Train the configured autoencoder on already normalized data: paths both machines see
    (a shared ``AEPIPE_DATA`` folder), or object-store URIs, fetched into this worker's home.

    ``request_id`` tags the MLflow run, whose artifacts then carry the trained model back to
    the ``reduce-features`` run that asked for it.
    """
    stores = run_stores(config, handed=(data.path, data.spec_path))
    data = dataclasses.replace(
        data,
        path=arrive(data.path, stores),
        spec_path=arrive(data.spec_path, stores),
    )
    return train(data, config, stores, request_id)
