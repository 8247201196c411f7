"""Scheduled scoring: new source rows -> the champion -> appended to the feature table."""

from __future__ import annotations

import dataclasses

from prefect import flow
from prefect.runtime import flow_run

from flows.ingest import ingest
from flows.partitions import run_partitioned
from stores.upkeep import leased, prune_ingests
from tasks.config import PipelineConfig
from tasks.credentials import run_stores
from tasks.incremental import incremental_since, whole_fingerprint
from tasks.monitor import drift_artifacts
from tasks.registry import scoring_lock
from tasks.score import (
    Scored,
    announce_drift,
    champion,
    prepare_scoring,
    retrain_note,
    score_report,
    scored_summary,
)
from tasks.scored import remember_scoring, unchanged_scoring
from tasks.validate import check_stores, validate_config


@flow(name="score-features", log_prints=True)
def score_features(config: PipelineConfig | None = None) -> Scored:
    """Score the rows the champion has not seen yet and append them; says so when none are new."""
    cfg = config or PipelineConfig()
    stores = run_stores(cfg)  # a deployed run's places checked first
    validate_config(cfg, training=False)  # the model's settings are the version's
    check_stores(cfg, stores)  # before any work: an unwritable folder or a down server fails now
    current = champion(cfg, stores)
    quiet = unchanged_scoring(cfg, stores, current.version)  # the last run's note says all
    if quiet is not None:
        score_report(quiet)
        return quiet
    # the ingest this run reads is not pruned meanwhile (its lease goes with the run)
    with leased(stores, cfg.dataset, flow_run.root_flow_run_id):
        # what the source gained since the version's last commit, where its reader can say
        since = incremental_since(cfg, stores, current.version)
        ingested = ingest(cfg, stores, since)  # partitioned; cached while it is unchanged
        # runs scoring this data set at once take turns from finding the new rows to
        # appending them (else each would append the same rows); the later one finds only
        # what is left
        with scoring_lock(stores, cfg.dataset):
            job = prepare_scoring(ingested, current, cfg, stores)
            committed = run_partitioned(job, cfg)  # partitions on the configured task runner
            scored = scored_summary(job, ingested, committed)
            remember_scoring(scored, whole_fingerprint(ingested, cfg), cfg, stores)  # next run
        drift_artifacts(job, committed)  # on this run, where its user looks
        # the commit landed: earlier ingests of the source are no longer anyone's
        pruned = prune_ingests(stores, cfg.dataset, ingested.path, cfg.maintain.orphan_age_hours)
    scored = dataclasses.replace(scored, pruned=pruned.note())
    emitted = announce_drift(scored, cfg)  # the reduce-features deployment's trigger retrains
    scored = dataclasses.replace(scored, retrain=retrain_note(scored, cfg, emitted))
    score_report(scored)  # the run's report, in the Prefect UI (the CLI prints it once)
    return scored
