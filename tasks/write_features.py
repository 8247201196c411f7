"""Write features: a job's row-group ranges scored in Prefect tasks, then one commit.

Each partition task reads its rows (:func:`partition_rows`), turns each batch into
feature-table rows with a :class:`PartitionScorer` (pure: no I/O) and stages them as data
files of the feature table, invisible to readers. One commit task then makes every
partition's files visible at once, and does nothing else; if any partition failed, the
staged files are deleted and the table is untouched. Monitoring (the drift check of the
written rows) is a task of its own after the commit (:mod:`tasks.monitor`), so nothing it
does can touch the table. The tasks run on whatever task runner the calling flow has:
threads by default, a Dask cluster when configured.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from prefect import task

import ae_models
from ae_models.outputs import score_outputs
from ae_models.preprocessing.normalizer import Normalizer, ScaledBytes, model_input
from ae_models.preprocessing.tensor_column import FEATURES, batch_matrix, find_tensor
from ae_models.scoring.drift import DriftCounts, count_batch
from ae_models.scoring.scorer import Scorer
from ae_models.vocabulary import ENTITY_KEY, EVENT_TIMESTAMP, IS_ANOMALY, SPLIT, TRAIN
from feature_store import commit_features, discard_features, load_table, stage_features
from feature_store.schema import TIMESTAMP, feature_batch, feature_schema
from tasks import registry
from tasks.explain import column_groups, top_columns
from tasks.io.parquet import read_ahead
from tasks.monitor import monitor_write
from tasks.runners import io_task
from tasks.scoring_job import (
    Committed,
    ScoringJob,
    StagedPart,
    files_here,
    plan_partitions,
    row_group_starts,
    selected_positions,
)

SCORE_BATCH = 16_384


@dataclass(frozen=True)
class ScoredBatch:
    """One batch's feature-table rows, its anomalies and its drift counts (None: none)."""

    features: pa.RecordBatch
    anomalies: int
    drift: DriftCounts | None


class PartitionScorer:
    """Source batches in, feature-table batches out: the model, its scorer and normalizer,
    the explanation groups and the drift reference, loaded once a partition. Pure: it reads
    and writes nothing."""

    def __init__(self, job: ScoringJob, source_schema: pa.Schema) -> None:
        self.job = job
        self.model, meta = ae_models.load_model(job.model_dir)
        self.scorer = Scorer.from_meta(meta, job.model_dir)
        self.normalizer = Normalizer.load(job.normalizer) if job.normalizer else None
        self.inputs = self.normalizer.source_columns if self.normalizer else job.features
        if find_tensor(source_schema) is not None:  # aepipe's files: the matrix is one column
            self.inputs = [FEATURES]
        self.names: list[str] | None = None
        self.groups: np.ndarray | None = None
        if job.explain_top_k and job.explain_spec:
            self.names, self.groups = column_groups(job.explain_spec)
        self.schema = feature_schema(self.model.config.code_size)
        self.scored_at = datetime.fromisoformat(job.scored_at)
        # the first write of a version scores its training rows too; they are not new data
        self.held_out_only = SPLIT in source_schema.names

    @property
    def columns(self) -> list[str]:
        """The source columns a batch must hold."""
        split = [SPLIT] if self.held_out_only else []
        return [ENTITY_KEY, EVENT_TIMESTAMP, *split, *self.inputs]

    def model_input(self, batch: pa.RecordBatch) -> np.ndarray | ScaledBytes:
        """The batch's model input: normalized here, or read as it is."""
        if self.normalizer is not None:
            return model_input(batch, self.normalizer, (ENTITY_KEY, EVENT_TIMESTAMP), lazy=True)
        if self.inputs == [FEATURES]:
            return batch_matrix(batch)
        return np.column_stack(
            [batch.column(c).to_numpy().astype(np.float32, copy=False) for c in self.inputs]
        )

    def score(self, batch: pa.RecordBatch) -> ScoredBatch:
        """Feature-table rows of ``batch``, with its anomaly count and drift counts."""
        job, groups = self.job, self.groups
        x = self.model_input(batch)
        scored = score_outputs(
            self.model, x, self.scorer, device=job.device, per_column=groups is not None
        )
        top = None
        if groups is not None:
            typical = self.scorer.column_typical
            top = top_columns(scored.per_column, groups, self.names, job.explain_top_k, typical)
        out = feature_batch(
            self.schema,
            batch.column(ENTITY_KEY),
            batch.column(EVENT_TIMESTAMP),
            scored.columns(),
            model_name=job.model_name,
            model_version=job.model_version,
            run_id=job.run_id,
            scored_at=self.scored_at,
            top=top,
        )
        anomalies = int(pc.sum(out.column(IS_ANOMALY)).as_py() or 0)
        return ScoredBatch(out, anomalies, self.drift_counts(scored, x, batch))

    def drift_counts(
        self, scored: Any, x: np.ndarray | ScaledBytes, batch: pa.RecordBatch
    ) -> DriftCounts | None:
        """The batch's new rows counted against the drift reference (None: no reference,
        or a model saved before calibration)."""
        reference = self.job.drift_reference
        if reference is None or scored.calibrated is None:
            return None
        if isinstance(x, ScaledBytes):  # pixels: no column has a reference of its own
            x = x.matrix() if reference["columns"] else np.empty((x.rows, 0), np.float32)
        keep: Any = slice(None)
        if self.held_out_only:
            keep = pc.not_equal(batch.column(SPLIT), TRAIN).to_numpy(zero_copy_only=False)
        return count_batch(
            reference, scored.calibrated[keep], scored.flagged[keep], x[keep], scored.codes[keep]
        )


def partition_rows(
    job: ScoringJob,
    source: pq.ParquetFile,
    row_groups: list[int],
    columns: list[str],
    selected: np.ndarray | None,
) -> Iterator[pa.RecordBatch]:
    """The partition's rows to score, in batches of about SCORE_BATCH rows: only the
    ``selected`` source positions (their few rows per source batch gathered first, so each
    batch is scored and written once; None: every row) and only rows after ``job.after``."""
    after = pa.scalar(datetime.fromisoformat(job.after), TIMESTAMP) if job.after else None
    if selected is not None:  # a few rows of each group: read it whole, take them
        starts = row_group_starts(source.metadata)
        found: Iterator[pa.RecordBatch] = (
            batch
            for group in row_groups
            for batch in _taken(source, group, columns, selected, starts).to_batches()
        )
    else:
        found = source.iter_batches(batch_size=SCORE_BATCH, row_groups=row_groups, columns=columns)
    held: list[pa.RecordBatch] = []
    rows = 0
    for batch in found:
        if after is not None:
            batch = batch.filter(pc.greater(batch.column(EVENT_TIMESTAMP).cast(TIMESTAMP), after))
        if batch.num_rows == 0:
            continue
        held.append(batch)
        rows += batch.num_rows
        if rows >= SCORE_BATCH:
            yield pa.concat_batches(held)
            held, rows = [], 0
    if held:
        yield pa.concat_batches(held)


def _taken(
    source: pq.ParquetFile,
    group: int,
    columns: list[str],
    selected: np.ndarray,
    starts: np.ndarray,
) -> pa.Table:
    """The ``selected`` rows (sorted source positions) that lie in row group ``group``."""
    lo, hi = np.searchsorted(selected, starts[group : group + 2])
    rows = source.read_row_group(group, columns=columns)
    return rows.take(pa.array(selected[lo:hi] - starts[group]))


def _expected_rows(
    meta: pq.FileMetaData, row_groups: list[int], selected: np.ndarray | None
) -> int:
    """An upper bound of the rows a partition writes: its groups' rows, or the selection's."""
    expected = sum(meta.row_group(g).num_rows for g in row_groups)
    return min(expected, len(selected)) if selected is not None else expected


def score_row_groups(job: ScoringJob, row_groups: list[int]) -> StagedPart:
    """Encode and score one partition's rows and stage them as feature-table data files."""
    job = files_here(job)
    # pre_buffer off: on wide files its read-ahead grows with the file (475 MB at 1M rows)
    source = pq.ParquetFile(job.source, pre_buffer=False)
    selected = selected_positions(job)  # read once: the rows and the bound both need it
    scorer = PartitionScorer(job, source.schema_arrow)
    anomalies = 0
    drift: DriftCounts | None = None

    def batches() -> Iterator[pa.RecordBatch]:
        nonlocal anomalies, drift
        # the next batch decodes while this one scores; one ahead: a 65,536-row batch of
        # pixels is 51 MB, and more in flight only grew the memory of large runs
        for batch in read_ahead(
            partition_rows(job, source, row_groups, scorer.columns, selected), depth=1
        ):
            scored = scorer.score(batch)
            anomalies += scored.anomalies
            yield scored.features
            # counted once the writer took the rows (they passed its checks)
            if scored.drift is not None:
                drift = scored.drift if drift is None else drift.merge(scored.drift)

    staged = stage_features(
        job.table,
        batches(),
        code_size=scorer.model.config.code_size,
        model_name=job.model_name,
        model_version=job.model_version,
        stores=job.stores,
        expected_rows=_expected_rows(source.metadata, row_groups, selected),
    )
    return StagedPart(staged, anomalies, drift)


def commit_parts(job: ScoringJob, parts: list[StagedPart]) -> Committed:
    """Make every partition's staged files visible in one commit (replace or append), with
    the registered model's aliases as they are now: read and committed under the registry
    lock, which promotions take too, so two runs committing in either order leave the
    table naming the registry's champion. Nothing else: monitoring follows the commit."""
    with registry.registry_lock(job.stores, job.model_name):
        aliases = (
            registry.current_aliases(job.model_name, job.stores) if job.record_aliases else None
        )
        rows = commit_features(
            [p.staged for p in parts],
            model_name=job.model_name,
            model_version=job.model_version,
            stores=job.stores,
            mode=job.mode,
            properties={"run_id": job.run_id, "partitions": str(len(parts)), **job.properties},
            aliases=aliases,
        )
    snapshot = load_table(job.table, job.stores).current_snapshot() if rows else None
    return Committed(
        job.table,
        rows,
        sum(p.anomalies for p in parts),
        job.model_version,
        snapshot.snapshot_id if snapshot else None,
        len(parts),
    )


def write_in_process(job: ScoringJob) -> Committed:
    """Run the job's partitions one after another in this process, commit them, then
    monitor the commit (the flows map them as Prefect tasks instead)."""
    parts = [score_row_groups(job, groups) for groups in plan_partitions(job)]
    return monitor_write(job, parts, commit_parts(job, parts))


def discard_parts(job: ScoringJob, parts: list[StagedPart]) -> None:
    """Delete the staged files of partitions whose siblings failed."""
    discard_features([p.staged for p in parts], job.stores)


# No timeout on mapped partition tasks: they run in worker threads, where Prefect cannot
# interrupt them (it warns on every run); a partition is bounded by partition_rows instead.
score_partition = task(name="score-partition")(score_row_groups)
commit = io_task("commit")(commit_parts).with_options(timeout_seconds=15 * 60)
