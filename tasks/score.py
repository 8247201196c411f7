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
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from prefect import task

import ae_models
from aepipe.settings import Stores
from feature_store import load_table, write_features
from feature_store.schema import ENTITY_KEY, EVENT_TIMESTAMP, TIMESTAMP, feature_schema
from feature_store.store import FeatureStoreError
from tasks.config import ConfigError, PipelineConfig
from tasks.ingest import IngestResult
from tasks.normalize import Normalizer
from tasks.tracking import configure_mlflow

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


def load_champion(cfg: PipelineConfig, stores: Stores) -> Champion:
    """Find the champion of the data set's registered model and fetch its model folder
    (weights, config, normalizer spec) from MLflow into ``<home>/models/<name>/<version>``."""
    import mlflow
    from mlflow.exceptions import MlflowException

    client = configure_mlflow(stores)
    name = cfg.model_name
    try:
        mv = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        raise ConfigError(
            f"registered model {name!r} has no champion to score with; run `aepipe run` first"
        ) from None
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
    for batch in source.iter_batches(batch_size=batch_rows, columns=columns):
        if keep is not None:
            if by_time:
                new = pc.greater(batch.column(EVENT_TIMESTAMP).cast(TIMESTAMP), keep[0])
            else:
                new = pc.invert(pc.is_in(batch.column(ENTITY_KEY), value_set=keep))
            batch = batch.filter(new)
        n = batch.num_rows
        if n == 0:
            continue
        x = normalizer.transform_arrow(batch)
        codes, errors, _ = ae_models.encode_and_score(model, x, device=device)
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

    def counted() -> Iterator[pa.RecordBatch]:
        nonlocal anomalies
        source = pq.ParquetFile(ingested.path)
        for batch in score_batches(
            source, normalizer, model, float(meta["threshold"]), champion, keep, by_time
        ):
            anomalies += int(pc.sum(batch.column("is_anomaly")).as_py() or 0)
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


champion = task(name="load-champion", retries=2, retry_delay_seconds=[1, 5])(load_champion)
score = task(name="score")(score_new_rows)
