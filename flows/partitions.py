"""The partitioned write as a subflow, so each run picks its task runner from its config."""

from __future__ import annotations

from prefect import flow

from tasks.config import PipelineConfig
from tasks.monitor import monitor
from tasks.runners import first_failure, map_with_progress, run_subflow
from tasks.scoring_job import Committed, ScoringJob, StagedPart, plan_partitions
from tasks.write_features import commit, discard_parts, score_partition


@flow(name="write-partitions")
def write_partitions(job: ScoringJob) -> Committed:
    """Map the partition task over the source's row-group ranges, commit them at once, then
    monitor what was written; if a partition fails, the others' staged files are deleted
    and nothing is committed."""
    results = map_with_progress(
        score_partition,
        (job, plan_partitions(job)),
        key="scoring-progress",
        description="Partitions scored",
    )
    done = [r for r in results if isinstance(r, StagedPart)]
    if len(done) < len(results):
        discard_parts(job, done)
        raise first_failure(results, StagedPart, "scoring partition")
    return monitor(job, done, commit(job, done))


def run_partitioned(job: ScoringJob, cfg: PipelineConfig) -> Committed:
    """Run :func:`write_partitions` as a subflow on the task runner ``cfg`` asks for."""
    return run_subflow(write_partitions, cfg, job)
