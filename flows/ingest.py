"""Partitioned ingest as a subflow, so each run picks its task runner from its config."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from prefect import flow, unmapped
from prefect.runtime import flow_run

from stores import Stores
from stores import data as data_store
from stores.space import room_for
from stores.upkeep import take_lease
from tasks.config import PipelineConfig
from tasks.ingest import (
    IngestedPart,
    IngestPlan,
    IngestResult,
    ingest_part_task,
    merge_ingest_task,
    plan_ingest_task,
)
from tasks.results import result_storage
from tasks.runners import map_with_progress, run_subflow


def ingest_bytes(plan: IngestPlan, cfg: PipelineConfig) -> int:
    """An upper bound of what ingesting ``plan`` writes to the data folder (its reader's)."""
    return plan.info.reader.write_bound(cfg.source, plan)


def failed_part(parts: list[Any]) -> BaseException:
    """What a partitioned ingest raises when a part did not come back: the first part's
    exception, or an error naming what came back instead (never a bare StopIteration)."""
    failed = [p for p in parts if not isinstance(p, IngestedPart)]
    for part in failed:
        if isinstance(part, BaseException):
            return part
    return RuntimeError(
        f"{len(failed)} ingest partition(s) returned no part (the first: "
        f"{type(failed[0]).__name__}); run it again"
    )


@flow(name="ingest-partitions")
def ingest_partitions(
    cfg: PipelineConfig, stores: Stores, since: str | None = None
) -> IngestResult:
    """Plan the source's partitions, read them in parallel tasks, merge them into one raw
    Parquet file; on an unchanged source every task is a cache hit and nothing is read.
    With ``since``, only what the source gained after that marker (its reader's)."""
    plan = plan_ingest_task(cfg, stores, since)
    # until the run ends: no other run prunes it meanwhile
    take_lease(stores, plan.folder, flow_run.root_flow_run_id)
    # cached results must point at files that exist (here, or in an object-store AEPIPE_DATA)
    refresh = not data_store.exists(stores, plan.raw_path)
    results = result_storage(stores)  # on AEPIPE_DATA: shared by every machine
    if not refresh:  # an unchanged source: cache hits, nothing written
        needed, what = 0, "reading the cached ingest"
    else:
        needed, what = ingest_bytes(plan, cfg), f"ingesting {cfg.source.path!r}"
    try:
        with room_for(stores.data_dir, needed, "data", what):
            parts = map_with_progress(
                ingest_part_task.with_options(refresh_cache=refresh, result_storage=results),
                (plan, plan.parts, unmapped(cfg)),
                key="ingest-progress",
                description="Source partitions ingested",
            )
            done = [p for p in parts if isinstance(p, IngestedPart)]
            if len(done) < len(parts):
                raise failed_part(parts)
            merge = merge_ingest_task.with_options(refresh_cache=refresh, result_storage=results)
            # a result cached by another home names its files there: here, they are in plan's
            # folder, and fetched when only the object store has them (a fresh worker)
            ingested = merge(plan, done, cfg).moved_to(plan.folder)
            data_store.need(stores, ingested)
            return ingested
    except BaseException:  # a partition or the merge failed: its files go
        shutil.rmtree(Path(plan.work), ignore_errors=True)
        data_store.drop(stores, plan.work)
        raise


def ingest(cfg: PipelineConfig, stores: Stores, since: str | None = None) -> IngestResult:
    """Run :func:`ingest_partitions` as a subflow on the task runner ``cfg`` asks for."""
    return run_subflow(ingest_partitions, cfg, cfg, stores, since)
