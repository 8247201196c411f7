"""The ingest wired: its partitions as a subflow (each run picks its task runner from its
config) or, for tests and benchmarks, in this process; either way the normalize stage's
work rides along the ingest's pass (:func:`tasks.normalize.while_reading`), and a failed
ingest leaves no partition files behind."""

from __future__ import annotations

from prefect import flow, unmapped
from prefect.runtime import flow_run

from stores import Stores
from stores import data as data_store
from stores.space import room_for
from stores.upkeep import take_lease
from tasks.config import PipelineConfig
from tasks.ingest import (
    cleaned_on_failure,
    ingest_part,
    ingest_part_task,
    merge_ingest,
    merge_ingest_task,
    plan_ingest,
    plan_ingest_task,
)
from tasks.normalize import while_reading
from tasks.results import result_storage
from tasks.runners import first_failure, map_with_progress, run_subflow
from tasks.stages import IngestedPart, IngestResult


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
        needed, what = plan.write_bound(cfg), f"ingesting {cfg.source.path!r}"
    along = while_reading(cfg)
    with room_for(stores.data_dir, needed, "data", what), cleaned_on_failure(plan, stores):
        parts = map_with_progress(
            ingest_part_task.with_options(refresh_cache=refresh, result_storage=results),
            (plan, plan.parts, unmapped(cfg), unmapped(along)),
            key="ingest-progress",
            description="Source partitions ingested",
        )
        done = [p for p in parts if isinstance(p, IngestedPart)]
        if len(done) < len(parts):
            raise first_failure(parts, IngestedPart, "ingest partition")
        merge = merge_ingest_task.with_options(refresh_cache=refresh, result_storage=results)
        # a result cached by another home names its files there: here, they are in plan's
        # folder, and fetched when only the object store has them (a fresh worker)
        ingested = merge(plan, done, cfg, along).moved_to(plan.folder)
        data_store.need(stores, ingested)
        return ingested


def ingest_source(cfg: PipelineConfig, stores: Stores, since: str | None = None) -> IngestResult:
    """Read the source into raw Parquet with entity id, event time and label, in this process,
    partition after partition, without Prefect (tests, benchmarks); with ``since``, only what
    it gained after that marker. The same stages, the same work alongside and the same
    cleanup as :func:`ingest_partitions`, with no cache.

    Rows that cannot be read (an undecodable image, say) go to ``quarantine.parquet`` beside
    it with their location and reason; rows in = rows written + rows quarantined.
    """
    plan = plan_ingest(cfg, stores, since)
    along = while_reading(cfg)
    with cleaned_on_failure(plan, stores):
        parts = [ingest_part(plan, part, cfg, along) for part in plan.parts]
        return merge_ingest(plan, parts, cfg, along)


def ingest(cfg: PipelineConfig, stores: Stores, since: str | None = None) -> IngestResult:
    """Run :func:`ingest_partitions` as a subflow on the task runner ``cfg`` asks for."""
    return run_subflow(ingest_partitions, cfg, cfg, stores, since)
