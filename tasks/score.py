"""Incremental scoring: new source rows through the champion, appended to the feature table.

"New" means: rows whose event timestamp is after the last one the champion has scored, when
the source names a timestamp column; otherwise rows whose entity id the champion has not
scored yet (new files in a folder, new rows at the end of a file, new image files). The
champion's own normalizer (its JSON spec, logged with the model) prepares the rows, so scoring
applies exactly the transform the model was trained with.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
from prefect import task

from ae_models.preprocessing import NORMALIZER_FILE
from feature_store import FeatureStoreError, load_table
from feature_store.schema import ENTITY_KEY, EVENT_TIMESTAMP, TIMESTAMP
from stores import Stores
from tasks import registry
from tasks.config import PipelineConfig, io_task
from tasks.ingest import IngestResult
from tasks.write_features import (
    Committed,
    ModelRef,
    ScoringJob,
    new_job,
    save_seen_ids,
    write_in_process,
)

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


def load_champion(cfg: PipelineConfig, stores: Stores) -> Champion:
    """Find the champion of the data set's registered model and fetch its model folder
    (weights, config, normalizer spec) from MLflow into ``<home>/models/<name>/<version>``."""
    mv = registry.champion_version(cfg.model_name, stores)
    folder = stores.home / "models" / cfg.model_name / str(mv.version)
    registry.download_version(cfg.model_name, mv.version, folder)
    return Champion(cfg.model_name, int(mv.version), mv.run_id, str(folder))


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
        normalizer=str(Path(champion.model_dir) / NORMALIZER_FILE),
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
