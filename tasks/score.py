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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from prefect import task

from aepipe.settings import Stores
from feature_store import load_table
from feature_store.schema import ENTITY_KEY, EVENT_TIMESTAMP, TIMESTAMP
from feature_store.store import FeatureStoreError
from tasks.config import ConfigError, PipelineConfig, io_task
from tasks.ingest import IngestResult
from tasks.partitions import (
    Committed,
    ModelRef,
    ScoringJob,
    new_job,
    save_seen_ids,
    write_in_process,
)

CHAMPION = "champion"


Champion = ModelRef  # the registered version that scores new data, and its model folder


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


def scoring_job(
    ingested: IngestResult, champion: Champion, cfg: PipelineConfig, stores: Stores
) -> ScoringJob:
    """The job that appends the champion's features for the source rows it has not scored:
    those after its latest event time (``source.timestamp`` set), else unseen entity ids."""
    by_time = cfg.source.timestamp is not None
    state = _scored_state(cfg.dataset, champion.version, stores, by_time)
    after = seen = None
    if state is not None and by_time:
        after = state[0].as_py().isoformat()
    elif state is not None:
        seen = save_seen_ids(state, stores.data_dir / cfg.dataset / "scoring")
    return new_job(
        champion,
        cfg,
        stores,
        source=ingested.path,
        mode="append",
        device=cfg.train.device,
        normalizer=str(Path(champion.model_dir) / "normalizer.json"),
        seen=seen,
        after=after,
        properties={"source_fingerprint": ingested.fingerprint},
    )


def scored_summary(job: ScoringJob, ingested: IngestResult, committed: Committed) -> Scored:
    """What a scoring run did, from its job and commit."""
    if job.seen:
        Path(job.seen).unlink(missing_ok=True)
    return Scored(
        job.table,
        job.model_name,
        job.model_version,
        ingested.rows,
        committed.rows,
        committed.anomalies,
        job.after,
        committed.snapshot_id,
    )


def score_new_rows(
    ingested: IngestResult, champion: Champion, cfg: PipelineConfig, stores: Stores
) -> Scored:
    """Score the new rows in this process, partition after partition, and append them in one
    commit (the score-features flow runs the partitions as tasks instead)."""
    job = scoring_job(ingested, champion, cfg, stores)
    return scored_summary(job, ingested, write_in_process(job))


champion = io_task("load-champion")(load_champion)
prepare_scoring = task(name="prepare-scoring")(scoring_job)
