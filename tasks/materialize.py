"""Materialize: every normalized row through the new model into its slice of the feature table.

The stage builds a :class:`~tasks.scoring_job.ScoringJob` (references only); the partitioned
write (``flows/partitions.py``) encodes row-group ranges in parallel tasks and replaces the
version's slice in one atomic commit.
"""

from __future__ import annotations

from stores import Stores
from tasks.config import PipelineConfig
from tasks.register import RegisteredModel
from tasks.scoring_job import Committed, ModelRef, ScoringJob, new_job
from tasks.stages import NormalizedData
from tasks.train import TrainedModel
from tasks.write_features import write_in_process

Materialized = Committed  # what the report reads: table, rows, anomalies, version, snapshot


def materialize_job(
    data: NormalizedData,
    trained: TrainedModel,
    registered: RegisteredModel,
    cfg: PipelineConfig,
    stores: Stores,
    properties: dict[str, str] | None = None,
) -> ScoringJob:
    """The job that replaces this model version's rows with features of every normalized row;
    ``properties`` go to its commit (where the source stood: :mod:`tasks.incremental`)."""
    model = ModelRef(
        registered.model_name, registered.version, registered.run_id, trained.model_dir
    )
    return new_job(
        model,
        cfg,
        stores,
        source=data.path,
        mode="replace",
        device=trained.device,
        features=list(data.features),
        explain_spec=data.spec_path,
        properties=dict(properties or {}),
    )


def materialize_features(
    data: NormalizedData,
    trained: TrainedModel,
    registered: RegisteredModel,
    cfg: PipelineConfig,
    stores: Stores,
) -> Materialized:
    """Materialize in this process, partition after partition (no Prefect needed)."""
    return write_in_process(materialize_job(data, trained, registered, cfg, stores))
