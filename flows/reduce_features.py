"""The main flow: ingest -> normalize -> train -> register -> materialize -> report."""

from __future__ import annotations

from prefect import flow
from prefect.runtime import flow_run

from flows.ingest import ingest
from flows.partitions import run_partitioned
from stores.upkeep import leased, prune_ingests
from tasks.config import PipelineConfig
from tasks.credentials import run_stores
from tasks.incremental import marker_properties
from tasks.materialize import materialize_job
from tasks.monitor import drift_artifacts
from tasks.normalize import normalize
from tasks.register import register
from tasks.registry import RetrainRequest, retrain_config
from tasks.report import RunSummary, report
from tasks.train import train, train_elsewhere
from tasks.validate import check_stores, validate_config


@flow(name="reduce-features", log_prints=True)
def reduce_features(
    config: PipelineConfig | None = None, retrain: RetrainRequest | None = None
) -> RunSummary:
    """Turn a data set into a versioned feature table of latent codes and anomaly scores;
    ``retrain`` (a drift event's names) retrains a data set with its stored config."""
    cfg = config or PipelineConfig()
    if retrain is not None:  # the stored config of the drifted version, never an event's
        cfg = retrain_config(retrain, cfg, run_stores(cfg))
    stores = run_stores(cfg)  # a deployed run's places checked first
    validate_config(cfg)
    check_stores(cfg, stores)  # before any work: an unwritable folder or a down server fails now
    # the ingest this run reads is not pruned meanwhile (its lease goes with the run)
    with leased(stores, cfg.dataset, flow_run.root_flow_run_id):
        ingested = ingest(cfg, stores)  # partitioned; cached while the source is unchanged
        data = normalize(ingested, cfg, stores)
        if cfg.train_deployment:
            trained = train_elsewhere(data, cfg, stores)
        else:
            trained = train(data, cfg, stores)
        registered = register(trained, ingested, data, cfg, stores)
        where = marker_properties(ingested, cfg)  # for scoring runs to read past
        job = materialize_job(data, trained, registered, cfg, stores, where)
        written = run_partitioned(job, cfg)  # partitions on the configured task runner
        drift_artifacts(job, written)  # on this run, where its user looks
        # the commit landed: earlier ingests of the source are no longer anyone's
        prune_ingests(stores, cfg.dataset, ingested.path, cfg.maintain.orphan_age_hours)
    return report(ingested, data, trained, registered, written, stores)
