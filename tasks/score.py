"""Incremental scoring: new source rows through the champion, appended to the feature table.

"New" means: rows whose event timestamp is after the last one the champion has scored, when
the source names a timestamp column; otherwise rows whose entity id the champion has not
scored yet (new files in a folder, new rows at the end of a file, new image files). The
champion's own normalizer (its JSON spec, logged with the model) prepares the rows, so scoring
applies exactly the transform the model was trained with.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from prefect import task

import ae_models
from ae_models.runtime import SCORING_PRECISION
from aepipe.settings import Stores
from feature_store import load_table, write_features
from feature_store.schema import ENTITY_KEY, EVENT_TIMESTAMP, TIMESTAMP, feature_schema
from feature_store.store import FeatureStoreError
from tasks.config import ConfigError, PipelineConfig, io_task
from tasks.ingest import IngestResult
from tasks.normalize import Normalizer

SCORE_BATCH = 16_384
CHAMPION = "champion"


@dataclass(frozen=True)
class Champion:
    """The registered version that scores new data, and its model folder on local disk."""

    model_name: str
    version: int
    run_id: str
    model_dir: str


@dataclass(frozen=True)
class Scored:
    """What one scoring run did: rows seen in the source, rows new and written, the commit."""

    table: str
    model_name: str
    model_version: int
    rows_seen: int
    rows_written: int
    anomalies: int
    since: str | None
    snapshot_id: int | None

    def to_text(self) -> str:
        """The lines the CLI prints at the end of a scoring run."""
        where = f"{self.table} (model {self.model_name} v{self.model_version})"
        if not self.rows_written:
            return (
                f"no new rows in the source ({self.rows_seen} rows, all scored already"
                f"{', up to ' + self.since if self.since else ''}); nothing written to {where}"
            )
        return (
            f"scored {self.rows_written} new of {self.rows_seen} source rows into {where}: "
            f"{self.anomalies} flagged as anomalies; snapshot {self.snapshot_id}"
        )


def champion_version(cfg: PipelineConfig, stores: Stores) -> Any:
    """The MLflow model version holding ``champion`` for the data set's registered model;
    a ConfigError (nothing created) when there is no store, model or champion."""
    from mlflow.exceptions import MlflowException

    from tasks.register import registry_client

    client = registry_client(stores)
    try:
        return client.get_model_version_by_alias(cfg.model_name, CHAMPION)
    except MlflowException:
        raise ConfigError(
            f"registered model {cfg.model_name!r} has no champion to score with; "
            "run `aepipe run` first"
        ) from None


def load_champion(cfg: PipelineConfig, stores: Stores) -> Champion:
    """Find the champion of the data set's registered model and fetch its model folder
    (weights, config, normalizer spec) from MLflow into ``<home>/models/<name>/<version>``."""
    import mlflow

    mv = champion_version(cfg, stores)
    name = cfg.model_name
    folder = stores.home / "models" / name / str(mv.version)
    if not (folder / "model.json").exists():
        staging = folder.with_name(f".{mv.version}.{os.getpid()}.download")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        mlflow.artifacts.download_artifacts(
            artifact_uri=f"models:/{name}/{mv.version}", dst_path=str(staging)
        )
        found = next(staging.rglob("model.json"), None)
        if found is None:
            raise ConfigError(f"model {name!r} v{mv.version} has no aepipe model folder")
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(found.parent, folder)
        shutil.rmtree(staging, ignore_errors=True)
    return Champion(name, int(mv.version), mv.run_id, str(folder))


def _scored_state(table: str, version: int, stores: Stores, by_time: bool) -> pa.Array | None:
    """What the version has scored: its latest event timestamp (``by_time``), else its ids."""
    try:
        tbl = load_table(table, stores)
    except FeatureStoreError:
        return None
    from pyiceberg.expressions import EqualTo

    column = EVENT_TIMESTAMP if by_time else ENTITY_KEY
    seen = tbl.scan(
        row_filter=EqualTo("model_version", version), selected_fields=(column,)
    ).to_arrow()
    if seen.num_rows == 0:
        return None
    if by_time:
        return pa.array([pc.max(seen.column(column)).as_py()], TIMESTAMP)
    return pc.unique(seen.column(column).combine_chunks())


def score_batches(
    source: pq.ParquetFile,
    normalizer: Normalizer,
    model: ae_models.Autoencoder,
    threshold: float,
    champion: Champion,
    keep: pa.Array | None = None,
    by_time: bool = False,
    batch_rows: int = SCORE_BATCH,
    device: str = "auto",
) -> Iterator[pa.RecordBatch]:
    """Feature-table rows for the raw rows of ``source`` that are new, batch by batch.

    ``keep`` is the scored state: with ``by_time`` a one-element timestamp array (rows after
    it are new), otherwise the entity ids already scored (rows not among them are new).
    """
    schema = feature_schema(model.config.code_size)
    scored_at = pa.scalar(datetime.now(UTC), TIMESTAMP)
    columns = [ENTITY_KEY, EVENT_TIMESTAMP, *normalizer.source_columns]

    # the ids' hash table is built once here, not once per batch
    seen = pd.Index(keep.to_pandas()) if keep is not None and not by_time else None

    for batch in source.iter_batches(batch_size=batch_rows, columns=columns):
        if keep is not None and by_time:
            batch = batch.filter(pc.greater(batch.column(EVENT_TIMESTAMP).cast(TIMESTAMP), keep[0]))
        elif seen is not None:
            batch = batch.filter(
                pa.array(seen.get_indexer(batch.column(ENTITY_KEY).to_pandas()) < 0)
            )
        if batch.num_rows == 0:
            continue
        x = model_input(batch, normalizer)
        codes, errors, _ = ae_models.encode_and_score(
            model, x, device=device, precision=SCORING_PRECISION, bce=False
        )
        yield feature_batch(
            schema,
            batch.column(ENTITY_KEY),
            batch.column(EVENT_TIMESTAMP).cast(TIMESTAMP),
            codes,
            errors,
            threshold,
            champion.model_name,
            champion.version,
            champion.run_id,
            scored_at,
        )


def model_input(batch: pa.RecordBatch, normalizer: Normalizer) -> np.ndarray | torch.Tensor:
    """The normalized model input of a raw batch. Pixel data (every column a fixed scaling of
    integers without nulls) takes a fast path: the columns are stacked as they are and torch
    transposes and scales them in one pass, several times faster than going through pandas."""
    specs = normalizer.columns
    if specs and all(c.kind == "scaled" for c in specs):
        cols = [batch.column(c.source) for c in specs]
        if all(pa.types.is_integer(c.type) and c.null_count == 0 for c in cols):
            stacked = torch.from_numpy(np.stack([c.to_numpy() for c in cols]))
            low = torch.tensor([c.low for c in specs], dtype=torch.float32)
            span = torch.tensor([c.high - c.low for c in specs], dtype=torch.float32)
            inv = torch.where(span > 0, 1.0 / torch.where(span > 0, span, 1.0), 0.0)
            return stacked.T.contiguous().float().sub_(low).mul_(inv).clamp_(0.0, 1.0)
    return normalizer.transform_arrow(batch)


def feature_batch(
    schema: pa.Schema,
    ids: pa.Array,
    timestamps: pa.Array,
    codes: np.ndarray,
    errors: np.ndarray,
    threshold: float,
    model_name: str,
    version: int,
    run_id: str,
    scored_at: pa.TimestampScalar,
) -> pa.RecordBatch:
    """One feature-table batch from ids, event times, latent codes and reconstruction errors."""
    n = len(errors)
    arrays = [ids.cast(pa.string()), timestamps]
    arrays += [pa.array(codes[:, j], pa.float32()) for j in range(codes.shape[1])]
    arrays += [
        pa.array(errors, pa.float32()),
        pa.array(errors > threshold, pa.bool_()),
        pa.array([model_name] * n, pa.string()),
        pa.array(np.full(n, version, np.int64)),
        pa.array([run_id] * n, pa.string()),
        pa.array(np.full(n, scored_at.value, np.int64)).cast(TIMESTAMP),
    ]
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


class _Progress:
    """Rows scored, as a Prefect progress artifact (inside a task run), at most every 2 s."""

    def __init__(self, total: int) -> None:
        from prefect.artifacts import create_progress_artifact
        from prefect.context import TaskRunContext

        self.total, self.rows, self.shown = max(total, 1), 0, time.monotonic()
        self.id = (
            create_progress_artifact(0.0, key="scoring-progress", description="Rows scored")
            if TaskRunContext.get() is not None
            else None
        )

    def add(self, rows: int) -> None:
        self.rows += rows
        if self.id is not None and time.monotonic() - self.shown > 2:
            self._show(min(100.0, 100.0 * self.rows / self.total))

    def done(self) -> None:
        if self.id is not None:
            self._show(100.0)

    def _show(self, percent: float) -> None:
        from prefect.artifacts import update_progress_artifact

        update_progress_artifact(self.id, percent)
        self.shown = time.monotonic()


def score_new_rows(
    ingested: IngestResult, champion: Champion, cfg: PipelineConfig, stores: Stores
) -> Scored:
    """Append the champion's features for the source rows it has not scored yet, in one
    atomic commit; with nothing new, write nothing."""
    model, meta = ae_models.load_model(champion.model_dir)
    normalizer = Normalizer.load(Path(champion.model_dir) / "normalizer.json")
    by_time = cfg.source.timestamp is not None
    keep = _scored_state(cfg.dataset, champion.version, stores, by_time)
    since = keep[0].as_py().isoformat() if by_time and keep is not None else None
    anomalies = 0
    progress = _Progress(ingested.rows)

    def counted() -> Iterator[pa.RecordBatch]:
        nonlocal anomalies
        # pre_buffer off: on wide files its read-ahead grows with the file (475 MB at 1M rows)
        source = pq.ParquetFile(ingested.path, pre_buffer=False)
        for batch in score_batches(
            source, normalizer, model, float(meta["threshold"]), champion, keep, by_time
        ):
            anomalies += int(pc.sum(batch.column("is_anomaly")).as_py() or 0)
            progress.add(batch.num_rows)
            yield batch

    rows = write_features(
        cfg.dataset,
        counted(),
        code_size=model.config.code_size,
        model_name=champion.model_name,
        model_version=champion.version,
        stores=stores,
        mode="append",
        properties={"run_id": champion.run_id, "source_fingerprint": ingested.fingerprint},
    )
    progress.done()
    snapshot = load_table(cfg.dataset, stores).current_snapshot() if rows else None
    return Scored(
        cfg.dataset,
        champion.model_name,
        champion.version,
        ingested.rows,
        rows,
        anomalies,
        since,
        snapshot.snapshot_id if snapshot else None,
    )


champion = io_task("load-champion")(load_champion)
score = task(name="score")(score_new_rows)
