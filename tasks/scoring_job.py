"""A scoring job: which rows of which file go through which model version into which table.

A :class:`ScoringJob` holds references only (paths, names, numbers, and the model's drift
reference read once from its ``model.json``), so it travels to any task runner's worker.
:func:`plan_partitions` cuts its source into row-group lists for the partition tasks; what
a write gives back is a :class:`StagedPart` per partition and one :class:`Committed`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

import ae_models
from ae_models.preprocessing.normalizer import Normalizer
from feature_store import StagedFeatures, prepare_table
from stores import Stores
from tasks.config import PipelineConfig

if TYPE_CHECKING:
    from ae_models.scoring.drift import DriftCheck, DriftCounts


@dataclass(frozen=True)
class ScoringJob:
    """What the partition tasks need to turn rows of ``source`` into feature-table rows.

    ``normalizer`` is the spec of the model's normalizer for raw rows, or None when the
    ``features`` columns are already normalized. ``rows`` (a Parquet file of the source's row
    positions, sorted) or ``after`` (an ISO time) keep only the rows not scored before.
    ``drift_reference`` is the model's (None: no drift check).
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
    drift_reference: dict[str, Any] | None = None


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


@dataclass(frozen=True)
class StagedPart:
    """One partition's staged files and what it found."""

    staged: StagedFeatures
    anomalies: int
    drift: DriftCounts | None = None  # the rows' drift counts (None: no reference, no rows)


@dataclass(frozen=True)
class Committed:
    """The commit of a partitioned write, and its drift check once monitored."""

    table: str
    rows: int
    anomalies: int
    model_version: int
    snapshot_id: int | None
    partitions: int
    drift: DriftCheck | None = None  # the written rows against the model's reference
    monitor_run: str | None = None  # the MLflow run the check was logged to (None: not)


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
    create it). The model's ``model.json`` is read here, once: the code width, and the drift
    reference the monitoring after the commit checks against."""
    spec = options.get("normalizer") or options.pop("explain_spec", None)
    top_k = cfg.explain_top_k
    if top_k is None:  # pixels explain nothing a reader can use: off for images by default
        pixels = spec is not None and Normalizer.load(spec).fixed_scale
        top_k = 0 if pixels or spec is None else 3
    meta = ae_models.read_meta(model.model_dir)
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
        drift_reference=meta.get("drift"),
        **options,
    )
    code_size = int(meta["config"]["code_size"])
    prepare_table(job.table, code_size=code_size, model_name=job.model_name, stores=job.stores)
    return job


def row_group_starts(meta: pq.FileMetaData) -> np.ndarray:
    """The source row position each row group starts at, and the total rows at the end."""
    sizes = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
    return np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])


def selected_positions(job: ScoringJob) -> np.ndarray | None:
    """The sorted source row positions the job scores, or None for every row."""
    if not job.rows:
        return None
    return pq.read_table(job.rows).column(0).to_numpy()


def plan_partitions(job: ScoringJob) -> list[list[int]]:
    """Row-group index lists of about ``job.partition_rows`` rows to score each (at least
    one list); with a selection, row groups holding none of its rows are left out and only
    the selected rows count."""
    meta = pq.ParquetFile(job.source).metadata
    starts = row_group_starts(meta)
    selected = selected_positions(job)
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


def files_here(job: ScoringJob) -> ScoringJob:
    """``job`` with its files (source, model folder, specs, row positions) on this machine:
    a worker with a home of its own fetches them from an object-store ``AEPIPE_DATA``."""
    from stores.data import arrive

    names = ("source", "model_dir", "normalizer", "rows", "explain_spec")
    return dataclasses.replace(job, **{n: arrive(getattr(job, n), job.stores) for n in names})


def save_row_positions(positions: np.ndarray, folder: Path) -> str:
    """Write the sorted source row positions a job scores to a Parquet file its partition
    tasks read (on any worker that shares the home)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"rows-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S%f')}.parquet"
    pq.write_table(pa.table({"position": pa.array(positions, pa.int64())}), path)
    return str(path)
