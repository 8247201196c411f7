"""Write features: row-group ranges of a Parquet file scored in Prefect tasks, one commit.

A :class:`ScoringJob` holds references only (paths, names, numbers). Each partition task
reads its row groups, encodes them and stages data files of the feature table (invisible to
readers); one commit task then makes every partition's files visible at once, or, if any
partition failed, the staged files are deleted and the table is untouched. The tasks run on
whatever task runner the calling flow has: threads by default, a Dask cluster when
configured, so partitions spread over the cluster's workers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from prefect import task

import ae_models
from ae_models.outputs import score_outputs
from ae_models.preprocessing.normalizer import Normalizer, ScaledBytes, model_input
from ae_models.preprocessing.tensor_column import FEATURES, batch_matrix, find_tensor
from ae_models.scoring.drift import DriftCheck, DriftCounts, count_batch, drift_decision
from ae_models.scoring.scorer import Scorer
from ae_models.vocabulary import ENTITY_KEY, EVENT_TIMESTAMP, IS_ANOMALY, SPLIT, TRAIN
from feature_store import (
    StagedFeatures,
    commit_features,
    discard_features,
    load_table,
    prepare_table,
    stage_features,
)
from feature_store.schema import TIMESTAMP, feature_batch, feature_schema
from stores import Stores
from tasks import registry
from tasks.config import PipelineConfig, io_task
from tasks.io.parquet import read_ahead
from tasks.monitor import record_check

SCORE_BATCH = 16_384


@dataclass(frozen=True)
class ScoringJob:
    """What the partition tasks need to turn rows of ``source`` into feature-table rows.

    ``normalizer`` is the spec of the model's normalizer for raw rows, or None when the
    ``features`` columns are already normalized. ``rows`` (a Parquet file of the source's row
    positions, sorted) or ``after`` (an ISO time) keep only the rows not scored before.
    """

    table: str
    source: str
    model_dir: str
    model_name: str
    model_version: int
    run_id: str
    stores: Stores
    mode: Literal["replace", "append"]
    normalizer: str | None = None
    features: list[str] = field(default_factory=list)
    rows: str | None = None
    selection: str = "all rows"  # which rows are scored, in words, for the run's summary
    after: str | None = None
    device: str = "auto"
    partition_rows: int = 500_000
    explain_top_k: int = 0  # source columns named in top_columns (0: none)
    explain_spec: str | None = None  # normalizer spec mapping model inputs to source columns
    properties: dict[str, str] = field(default_factory=dict)
    # record the registered model's aliases on the table with the commit (read at commit
    # time, under the registry lock, so a promotion is never overwritten by an older map)
    record_aliases: bool = True
    scored_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())


@dataclass(frozen=True)
class ModelRef:
    """A registered model version and its model folder on local disk."""

    model_name: str
    version: int
    run_id: str
    model_dir: str

    def files(self) -> tuple[str, ...]:
        """The data-store folder this version names (:mod:`stores.data`'s accessor)."""
        return (self.model_dir,)


def new_job(
    model: ModelRef,
    cfg: PipelineConfig,
    stores: Stores,
    *,
    source: str,
    mode: Literal["replace", "append"],
    device: str,
    **options: Any,
) -> ScoringJob:
    """A job writing ``model``'s features of ``source`` rows into the data set's table, once
    the table exists (created here, before the partitions start, so they do not race to
    create it; the code width comes from the model's ``model.json``)."""
    spec = options.get("normalizer") or options.pop("explain_spec", None)
    top_k = cfg.explain_top_k
    if top_k is None:  # pixels explain nothing a reader can use: off for images by default
        pixels = spec is not None and Normalizer.load(spec).fixed_scale
        top_k = 0 if pixels or spec is None else 3
    job = ScoringJob(
        table=cfg.dataset,
        source=source,
        model_dir=model.model_dir,
        model_name=model.model_name,
        model_version=model.version,
        run_id=model.run_id,
        stores=stores,
        mode=mode,
        device=device,
        partition_rows=cfg.partition_rows,
        explain_top_k=top_k if spec is not None else 0,
        explain_spec=spec,
        **options,
    )
    code_size = int(ae_models.read_meta(job.model_dir)["config"]["code_size"])
    prepare_table(job.table, code_size=code_size, model_name=job.model_name, stores=job.stores)
    return job


@dataclass(frozen=True)
class StagedPart:
    """One partition's staged files and what it found."""

    staged: StagedFeatures
    anomalies: int
    drift: DriftCounts | None = None  # the rows' drift counts (None: no reference, no rows)


@dataclass(frozen=True)
class Committed:
    """The commit of a partitioned write."""

    table: str
    rows: int
    anomalies: int
    model_version: int
    snapshot_id: int | None
    partitions: int
    drift: DriftCheck | None = None  # the written rows against the model's reference
    monitor_run: str | None = None  # the MLflow run the check was logged to (None: not)


def _row_group_starts(meta: pq.FileMetaData) -> np.ndarray:
    """The source row position each row group starts at, and the total rows at the end."""
    sizes = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
    return np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])


def _selected_positions(job: ScoringJob) -> np.ndarray | None:
    """The sorted source row positions the job scores, or None for every row."""
    if not job.rows:
        return None
    return pq.read_table(job.rows).column(0).to_numpy()


def plan_partitions(job: ScoringJob) -> list[list[int]]:
    """Row-group index lists of about ``job.partition_rows`` rows to score each (at least
    one list); with a selection, row groups holding none of its rows are left out and only
    the selected rows count."""
    meta = pq.ParquetFile(job.source).metadata
    starts = _row_group_starts(meta)
    selected = _selected_positions(job)
    parts: list[list[int]] = [[]]
    rows = 0
    for i in range(meta.num_row_groups):
        size = meta.row_group(i).num_rows
        if selected is not None:
            lo, hi = np.searchsorted(selected, starts[i : i + 2])
            if lo == hi:
                continue
            size = int(hi - lo)
        if rows >= job.partition_rows:
            parts.append([])
            rows = 0
        parts[-1].append(i)
        rows += size
    return parts


def top_columns(
    errors: np.ndarray,
    groups: np.ndarray,
    names: list[str],
    k: int,
    typical: np.ndarray | None = None,
) -> pa.Array:
    """Per row, the ``k`` source columns whose error is most unusual, most unusual first:
    per-input error terms summed over each source column's inputs (``groups``: inputs x
    sources, one-hot groups summed back to their column), each divided by the same sum of
    the inputs' ``typical`` (training mean) errors. Without that division a column with many
    one-hot levels would top every row by its width alone; models saved without ``typical``
    rank by the raw sums."""
    contrib = errors @ groups
    if typical is not None:
        usual = np.asarray(typical, np.float32) @ groups
        floor = max(0.1 * float(np.median(usual)), 1e-12)  # a column always reconstructed
        contrib = contrib / np.maximum(usual, floor)  # exactly does not turn noise into "top"
    k = min(k, contrib.shape[1])
    top = np.argpartition(-contrib, k - 1, axis=1)[:, :k]
    order = np.take_along_axis(contrib, top, axis=1).argsort(axis=1)[:, ::-1]
    top = np.take_along_axis(top, order, axis=1)
    values = pa.array(np.asarray(names, dtype=object)[top.reshape(-1)], pa.string())
    offsets = pa.array(np.arange(0, top.size + 1, k, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, values)


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


def _files_here(job: ScoringJob) -> ScoringJob:
    """``job`` with its files (source, model folder, specs, row positions) on this machine:
    a worker with a home of its own fetches them from an object-store ``AEPIPE_DATA``."""
    from stores.data import arrive

    names = ("source", "model_dir", "normalizer", "rows", "explain_spec")
    return dataclasses.replace(job, **{n: arrive(getattr(job, n), job.stores) for n in names})


def score_row_groups(job: ScoringJob, row_groups: list[int]) -> StagedPart:
    """Encode and score one partition's rows and stage them as feature-table data files."""
    job = _files_here(job)
    model, meta = ae_models.load_model(job.model_dir)
    scorer = Scorer.from_meta(meta, job.model_dir)
    normalizer = Normalizer.load(job.normalizer) if job.normalizer else None
    inputs = normalizer.source_columns if normalizer else job.features
    groups = names = None
    if job.explain_top_k and job.explain_spec:
        names, source_of = Normalizer.load(job.explain_spec).source_groups()
        groups = np.zeros((len(source_of), len(names)), np.float32)
        groups[np.arange(len(source_of)), source_of] = 1.0
    schema = feature_schema(model.config.code_size)
    scored_at = datetime.fromisoformat(job.scored_at)
    selected = _selected_positions(job)
    after = pa.scalar(datetime.fromisoformat(job.after), TIMESTAMP) if job.after else None
    anomalies = 0
    reference = meta.get("drift")
    drift: DriftCounts | None = None
    source_schema = pq.read_schema(job.source)
    source_names = source_schema.names
    if find_tensor(source_schema) is not None:  # aepipe's files: the matrix is one column
        inputs = [FEATURES]
    # the first write of a version scores its training rows too; they are not new data
    held_out_only = SPLIT in source_names

    def wanted() -> Iterator[pa.RecordBatch]:
        """The rows to score, in batches of about SCORE_BATCH rows: a selection's few rows
        per source batch are gathered first, so each batch is scored and written once."""
        # pre_buffer off: on wide files its read-ahead grows with the file (475 MB at 1M rows)
        source = pq.ParquetFile(job.source, pre_buffer=False)
        held: list[pa.RecordBatch] = []
        rows = 0
        columns = [ENTITY_KEY, EVENT_TIMESTAMP, *([SPLIT] if held_out_only else []), *inputs]
        if selected is not None:  # a few rows of each group: read it whole, take them
            starts = _row_group_starts(source.metadata)
            found: Iterator[pa.RecordBatch] = (
                batch
                for group in row_groups
                for batch in _taken(source, group, columns, selected, starts).to_batches()
            )
        else:
            found = source.iter_batches(
                batch_size=SCORE_BATCH, row_groups=row_groups, columns=columns
            )
        for batch in found:
            if after is not None:
                batch = batch.filter(
                    pc.greater(batch.column(EVENT_TIMESTAMP).cast(TIMESTAMP), after)
                )
            if batch.num_rows == 0:
                continue
            held.append(batch)
            rows += batch.num_rows
            if rows >= SCORE_BATCH:
                yield pa.concat_batches(held)
                held, rows = [], 0
        if held:
            yield pa.concat_batches(held)

    def count(scored: Any, x: np.ndarray | ScaledBytes, batch: pa.RecordBatch) -> None:
        nonlocal drift
        if reference is None or scored.calibrated is None:
            return  # a model saved before drift references: scoring works, nothing checked
        if isinstance(x, ScaledBytes):  # pixels: no column has a reference of its own
            x = x.matrix() if reference["columns"] else np.empty((x.rows, 0), np.float32)
        keep = slice(None)
        if held_out_only:
            keep = pc.not_equal(batch.column(SPLIT), TRAIN).to_numpy(zero_copy_only=False)
        found = count_batch(
            reference, scored.calibrated[keep], scored.flagged[keep], x[keep], scored.codes[keep]
        )
        drift = found if drift is None else drift.merge(found)

    def batches():
        nonlocal anomalies
        # the next batch decodes while this one scores; one ahead: a 65,536-row batch of
        # pixels is 51 MB, and more in flight only grew the memory of large runs
        for batch in read_ahead(wanted(), depth=1):
            if normalizer is not None:
                x = model_input(batch, normalizer, (ENTITY_KEY, EVENT_TIMESTAMP), lazy=True)
            elif inputs == [FEATURES]:
                x = batch_matrix(batch)
            else:
                x = np.column_stack(
                    [batch.column(c).to_numpy().astype(np.float32, copy=False) for c in inputs]
                )
            scored = score_outputs(
                model, x, scorer, device=job.device, per_column=groups is not None
            )
            top = (
                top_columns(
                    scored.per_column, groups, names, job.explain_top_k, scorer.column_typical
                )
                if groups is not None
                else None
            )
            out = feature_batch(
                schema,
                batch.column(ENTITY_KEY),
                batch.column(EVENT_TIMESTAMP),
                scored.columns(),
                model_name=job.model_name,
                model_version=job.model_version,
                run_id=job.run_id,
                scored_at=scored_at,
                top=top,
            )
            anomalies += int(pc.sum(out.column(IS_ANOMALY)).as_py() or 0)
            yield out
            count(scored, x, batch)  # once the writer took the rows (they passed its checks)

    # an upper bound of the rows written: the new rows (all partitions'), or the groups' rows
    groups_meta = pq.ParquetFile(job.source).metadata
    expected = sum(groups_meta.row_group(g).num_rows for g in row_groups)
    if selected is not None:
        expected = min(expected, len(selected))
    staged = stage_features(
        job.table,
        batches(),
        code_size=model.config.code_size,
        model_name=job.model_name,
        model_version=job.model_version,
        stores=job.stores,
        expected_rows=expected,
    )
    return StagedPart(staged, anomalies, drift)


def commit_parts(job: ScoringJob, parts: list[StagedPart]) -> Committed:
    """Make every partition's staged files visible in one commit (replace or append), with
    the registered model's aliases as they are now: read and committed under the registry
    lock, which promotions take too, so two runs committing in either order leave the
    table naming the registry's champion."""
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
    check, monitor_run = None, None
    if rows:
        check = drift_of(job, parts)
        monitor_run = record_check(check, job)
    return Committed(
        job.table,
        rows,
        sum(p.anomalies for p in parts),
        job.model_version,
        snapshot.snapshot_id if snapshot else None,
        len(parts),
        check,
        monitor_run,
    )


def drift_of(job: ScoringJob, parts: list[StagedPart]) -> DriftCheck:
    """The drift check of every partition's rows together, against the model's reference."""
    reference = ae_models.read_meta(job.model_dir).get("drift")
    counts = [p.drift for p in parts if p.drift is not None]
    merged = None
    for found in counts:
        merged = found if merged is None else merged.merge(found)
    return drift_decision(reference, merged)


def write_in_process(job: ScoringJob) -> Committed:
    """Run the job's partitions one after another in this process, then commit them (the
    flows map them as Prefect tasks instead)."""
    return commit_parts(job, [score_row_groups(job, groups) for groups in plan_partitions(job)])


def discard_parts(job: ScoringJob, parts: list[StagedPart]) -> None:
    """Delete the staged files of partitions whose siblings failed."""
    discard_features([p.staged for p in parts], job.stores)


def save_row_positions(positions: np.ndarray, folder: Path) -> str:
    """Write the sorted source row positions a job scores to a Parquet file its partition
    tasks read (on any worker that shares the home)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"rows-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S%f')}.parquet"
    pq.write_table(pa.table({"position": pa.array(positions, pa.int64())}), path)
    return str(path)


# No timeout on mapped partition tasks: they run in worker threads, where Prefect cannot
# interrupt them (it warns on every run); a partition is bounded by partition_rows instead.
score_partition = task(name="score-partition")(score_row_groups)
commit = io_task("commit")(commit_parts).with_options(timeout_seconds=15 * 60)
