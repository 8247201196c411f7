"""Materialize: stream the normalized rows through the encoder into the Iceberg feature table."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

import ae_models
from ae_models.runtime import SCORING_PRECISION
from aepipe.settings import Stores
from feature_store import write_features
from feature_store.schema import ENTITY_KEY, EVENT_TIMESTAMP, TIMESTAMP, feature_schema
from tasks.config import PipelineConfig, io_task
from tasks.ingest import NormalizedData
from tasks.register import RegisteredModel
from tasks.score import feature_batch
from tasks.train import TrainedModel

BATCH_ROWS = 8192


@dataclass(frozen=True)
class Materialized:
    """Reference to the feature table slice that was written."""

    table: str
    rows: int
    anomalies: int
    model_version: int
    snapshot_id: int | None


def feature_batches(
    data: NormalizedData,
    trained: TrainedModel,
    registered: RegisteredModel,
    batch_rows: int = BATCH_ROWS,
) -> Iterator[pa.RecordBatch]:
    """Encode and score the normalized Parquet file batch by batch, as feature-table rows."""
    model, meta = ae_models.load_model(trained.model_dir)
    threshold = float(meta["threshold"])
    schema = feature_schema(model.config.code_size)
    scored_at = pa.scalar(datetime.now(UTC), TIMESTAMP)
    reader = pq.ParquetFile(data.path, pre_buffer=False)
    for batch in reader.iter_batches(
        batch_size=batch_rows, columns=[ENTITY_KEY, EVENT_TIMESTAMP, *data.features]
    ):
        x = np.column_stack(
            [batch.column(c).to_numpy().astype(np.float32, copy=False) for c in data.features]
        )
        codes, mse, _ = ae_models.encode_and_score(
            model, x, device=trained.device, precision=SCORING_PRECISION, bce=False
        )
        yield feature_batch(
            schema,
            batch.column(ENTITY_KEY),
            batch.column(EVENT_TIMESTAMP).cast(TIMESTAMP),
            codes,
            mse,
            threshold,
            registered.model_name,
            registered.version,
            registered.run_id,
            scored_at,
        )


def materialize_features(
    data: NormalizedData,
    trained: TrainedModel,
    registered: RegisteredModel,
    cfg: PipelineConfig,
    stores: Stores,
) -> Materialized:
    """Stream this model version's features for every row into one atomic commit."""
    from feature_store import load_table

    anomalies = 0

    def counted() -> Iterator[pa.RecordBatch]:
        nonlocal anomalies
        for batch in feature_batches(data, trained, registered):
            anomalies += int(pc.sum(batch.column("is_anomaly")).as_py() or 0)
            yield batch

    rows = write_features(
        cfg.dataset,
        counted(),
        code_size=trained.code_size,
        model_name=registered.model_name,
        model_version=registered.version,
        stores=stores,
        properties={"run_id": registered.run_id},
    )
    snapshot = load_table(cfg.dataset, stores).current_snapshot()
    return Materialized(
        cfg.dataset, rows, anomalies, registered.version, snapshot.snapshot_id if snapshot else None
    )


materialize = io_task("materialize")(materialize_features)
