"""Partitioned ingest as a subflow, so each run picks its task runner from its config."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, unmapped

from flows.partitions import map_with_progress, task_runner_for
from stores import Stores
from tasks.config import PipelineConfig
from tasks.ingest import (
    IngestedPart,
    IngestResult,
    ingest_part_task,
    merge_ingest_task,
    plan_ingest_task,
)


@flow(name="ingest-partitions")
def ingest_partitions(cfg: PipelineConfig, stores: Stores) -> IngestResult:
    """Plan the source's partitions, read them in parallel tasks, merge them into one raw
    Parquet file; on an unchanged source every task is a cache hit and nothing is read."""
    plan = plan_ingest_task(cfg, stores)
    refresh = not plan.raw_path.exists()  # cached results must point at files that exist
    parts = map_with_progress(
        ingest_part_task.with_options(refresh_cache=refresh),
        (plan, plan.parts, unmapped(cfg)),
        key="ingest-progress",
        description="Source partitions ingested",
    )
    done = [p for p in parts if isinstance(p, IngestedPart)]
    if len(done) < len(parts):
        import shutil

        shutil.rmtree(Path(plan.work), ignore_errors=True)
        raise next(p for p in parts if isinstance(p, BaseException))
    return merge_ingest_task.with_options(refresh_cache=refresh)(plan, done, cfg)


def ingest(cfg: PipelineConfig, stores: Stores) -> IngestResult:
    """Run :func:`ingest_partitions` as a subflow on the task runner ``cfg`` asks for."""
    return ingest_partitions.with_options(task_runner=task_runner_for(cfg))(cfg, stores)
