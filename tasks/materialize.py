"""Materialize: every normalized row through the new model into its slice of the feature table.

The stage builds a :class:`~tasks.partitions.ScoringJob` (references only); the partitioned
write (``flows/partitions.py``) encodes row-group ranges in parallel tasks and replaces the
version's slice in one atomic commit.
"""

from __future__ import annotations

from aepipe.settings import Stores
from feature_store import prepare_table
from tasks.config import PipelineConfig
from tasks.ingest import NormalizedData
from tasks.partitions import Committed, ScoringJob, commit_parts, plan_partitions, score_row_groups
from tasks.register import RegisteredModel
from tasks.train import TrainedModel

Materialized = Committed  # what the report reads: table, rows, anomalies, version, snapshot


def materialize_job(
    data: NormalizedData,
    trained: TrainedModel,
    registered: RegisteredModel,
    cfg: PipelineConfig,
    stores: Stores,
) -> ScoringJob:
    """The job that replaces this model version's rows with features of every normalized row;
    the table is created first, so parallel partitions do not race to create it."""
    prepare_table(
        cfg.dataset, code_size=trained.code_size, model_name=registered.model_name, stores=stores
    )
    return ScoringJob(
        table=cfg.dataset,
        source=data.path,
        model_dir=trained.model_dir,
        model_name=registered.model_name,
        model_version=registered.version,
        run_id=registered.run_id,
        stores=stores,
        mode="replace",
        features=list(data.features),
        device=trained.device,
        partition_rows=cfg.partition_rows,
    )


def materialize_features(
    data: NormalizedData,
    trained: TrainedModel,
    registered: RegisteredModel,
    cfg: PipelineConfig,
    stores: Stores,
) -> Materialized:
    """Materialize in this process, partition after partition (no Prefect needed)."""
    job = materialize_job(data, trained, registered, cfg, stores)
    parts = [score_row_groups(job, groups) for groups in plan_partitions(job)]
    return commit_parts(job, parts)
