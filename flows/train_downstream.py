"""Downstream check: a classifier on the feature table vs raw normalized features vs PCA."""

from __future__ import annotations

from prefect import flow
from prefect.runtime import flow_run

from flows.ingest import ingest
from stores.upkeep import leased
from tasks.config import PipelineConfig
from tasks.credentials import run_stores
from tasks.downstream import DownstreamReport, downstream_report, train_downstream
from tasks.normalize import normalize
from tasks.registry import CHAMPION
from tasks.validate import check_stores, validate_config


@flow(name="train-downstream", log_prints=True)
def train_downstream_flow(
    config: PipelineConfig | None = None, model_version: str | int = CHAMPION
) -> DownstreamReport:
    """Fit logistic regression on the table's codes and on its two baselines; print accuracies."""
    cfg = config or PipelineConfig()
    stores = run_stores(cfg)  # a deployed run's places checked first
    validate_config(cfg, training=False)  # the model's settings are the version's
    check_stores(cfg, stores)  # before any work: an unwritable folder or a down server fails now
    # the ingest this run reads is not pruned meanwhile (its lease goes with the run)
    with leased(stores, cfg.dataset, flow_run.root_flow_run_id):
        ingested = ingest(cfg, stores)  # partitioned; cached while the source is unchanged
        data = normalize(ingested, cfg, stores)
        report = train_downstream(data, cfg, stores, model_version)
    downstream_report(report, cfg.dataset)  # in the Prefect UI; the CLI prints it once
    return report
