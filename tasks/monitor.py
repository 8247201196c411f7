"""Where a scoring run's drift check goes: a row of the data set's drift table (the record
``aepipe drift`` and ``feature_store.read_drift`` read), metrics and a score histogram on
the model version's MLflow monitoring run, and a table and the picture in the Prefect UI.

One monitoring run per registered model version (tag ``aepipe.monitors`` =
``<model name>/<version>``) collects every check of that version as metric steps, so the
MLflow UI charts a model's drift over time; the model version's tag ``monitoring_run_id``
points at it. The runs live in their own experiment, ``aepipe-<dataset>-monitoring``, so the
data set's training experiment holds training runs only, for comparing them.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import tempfile
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ae_models.scoring.drift import DriftCheck, drift_decision
from feature_store import record_drift
from tasks.logs import run_logger
from tasks.runners import io_task

if TYPE_CHECKING:
    from tasks.scoring_job import Committed, ScoringJob, StagedPart

log = logging.getLogger(__name__)

MONITOR_TAG = "aepipe.monitors"
VERSION_TAG = "monitoring_run_id"
PICTURES = "drift"  # the monitoring run's artifact folder of score histograms


def artifact_key(dataset: str, what: str) -> str:
    """A Prefect artifact key for the data set (lowercase letters, digits and dashes)."""
    return re.sub(r"[^a-z0-9-]+", "-", f"aepipe-{dataset}-{what}".lower())


EVIDENCE = (
    "flagged_rate",
    "expected_rate",
    "score_p_value",
    "score_ks",
    "rate_p_value",
    "code_p_value",
)


def evidence(check: DriftCheck) -> dict[str, float | None]:
    """The check's figures that are one number each (None when it was not checked)."""
    return {name: getattr(check, name) for name in EVIDENCE}


def drift_row(check: DriftCheck, job: ScoringJob) -> dict[str, Any]:
    """One row of the data set's drift table for ``check``."""
    return {
        "scored_at": datetime.fromisoformat(job.scored_at),
        "model_name": job.model_name,
        "model_version": job.model_version,
        "run_id": job.run_id,
        "rows": check.rows,
        "checked": check.checked,
        "drifted": check.drifted,
        "reason": check.reason,
        **evidence(check),
        "drifted_columns": list(check.drifted_columns),
        "psi": json.dumps(check.psi),
    }


def drift_metrics(check: DriftCheck) -> dict[str, float]:
    """A check as MLflow metrics: the decision (``drift_detected`` 1 or 0), the rows, each
    test's p-value, the flagged and expected rates, and the PSI of every source column
    (``psi/<column>``, the column's name made a valid metric key)."""
    figures: dict[str, Any] = {
        "drift_rows": check.rows,
        "drift_detected": float(check.drifted),
        **evidence(check),
        "max_psi": max(check.psi.values(), default=None),
    }
    figures |= {"psi/" + re.sub(r"[^\w\-. /]", "_", c): v for c, v in check.psi.items()}
    return {k: float(v) for k, v in figures.items() if v is not None}


def monitoring_run(client: Any, job: ScoringJob) -> str:
    """The id of the model version's monitoring run, created on its first check."""
    from tasks.tracking import ensure_experiment, experiment_name

    label = f"{job.model_name}/{job.model_version}"
    experiment = ensure_experiment(experiment_name(job.table, "monitoring"), job.stores)
    found = client.search_runs(
        [experiment],
        filter_string=f"tags.`{MONITOR_TAG}` = '{label}'",
        order_by=["attributes.start_time ASC"],  # two first checks at once: the older wins
        max_results=1,
    )
    if found:
        return found[0].info.run_id
    run = client.create_run(
        experiment,
        run_name=f"monitor {job.model_name} v{job.model_version}",
        tags={
            MONITOR_TAG: label,
            "aepipe.dataset": job.table,
            "aepipe.training_run": job.run_id,
            "mlflow.note.content": f"Drift checks of every scoring run of {label}, one "
            "metric step a check; pictures under drift/.",
        },
    )
    client.set_model_version_tag(
        job.model_name, str(job.model_version), VERSION_TAG, run.info.run_id
    )
    return run.info.run_id


def log_to_mlflow(check: DriftCheck, job: ScoringJob, picture: Path | None) -> str:
    """Add the check to the monitoring run as the next metric step (timestamped with the
    scoring time) and its picture; the run's id."""
    from mlflow.entities import Metric

    from tasks.tracking import configure_mlflow

    client = configure_mlflow(job.stores)
    run_id = monitoring_run(client, job)
    step = len(client.get_metric_history(run_id, "drift_rows"))
    at = int(datetime.fromisoformat(job.scored_at).timestamp() * 1000)
    metrics = [Metric(k, v, at, step) for k, v in drift_metrics(check).items()]
    for start in range(0, len(metrics), 1000):  # MLflow takes at most 1000 in one batch
        client.log_batch(run_id, metrics=metrics[start : start + 1000])
    if picture is not None:
        client.log_artifact(run_id, str(picture), PICTURES)
    client.set_terminated(run_id)  # FINISHED: the latest check's time is its end time
    return run_id


def picture_name(job: ScoringJob) -> str:
    """The file name of a check's score histogram: the scoring time, sortable."""
    return f"scores-{datetime.fromisoformat(job.scored_at).strftime('%Y%m%dT%H%M%S%fZ')}.svg"


def publish_to_prefect(check: DriftCheck, job: ScoringJob, run_id: str | None) -> None:
    """A table artifact with the check's evidence and, when the picture reached MLflow, an
    image artifact of it (served by the MLflow UI), on the current Prefect run."""
    from prefect.artifacts import create_image_artifact, create_table_artifact

    verdict = "drift" if check.drifted else "no drift" if check.checked else "not checked"
    rows = [
        {"figure": "decision", "value": verdict},
        {"figure": "rows checked", "value": str(check.rows)},
    ]
    if check.checked:
        rows += [
            {"figure": "score p-value (KS)", "value": f"{check.score_p_value:.3g}"},
            {"figure": "flagged rate", "value": f"{check.flagged_rate:.2%}"},
            {"figure": "expected rate", "value": f"{check.expected_rate:.2%}"},
            {"figure": "flagged p-value (binomial)", "value": f"{check.rate_p_value:.3g}"},
            {"figure": "codes p-value", "value": f"{check.code_p_value:.3g}"},
            {"figure": "drifted columns", "value": ", ".join(check.drifted_columns) or "none"},
            *(
                {"figure": f"PSI {c}", "value": f"{v:.3f}"}
                for c, v in sorted(check.psi.items(), key=lambda kv: -kv[1])[:10]
            ),
        ]
    else:
        rows.append({"figure": "not checked", "value": check.reason})
    label = f"{job.model_name} v{job.model_version}"
    create_table_artifact(
        rows, key=artifact_key(job.table, "drift"), description=f"drift check of {label}"
    )
    if run_id is not None and check.checked:
        url = (
            f"{job.stores.mlflow_ui_url}/get-artifact?path={PICTURES}/{picture_name(job)}"
            f"&run_id={run_id}"
        )
        create_image_artifact(
            url,
            key=artifact_key(job.table, "drift-scores"),
            description=f"calibrated scores of {label} against its training reference "
            "(served by the MLflow UI)",
        )


def record_check(check: DriftCheck, job: ScoringJob) -> str | None:
    """Keep a scoring run's drift check: the drift table's row first (the record), then the
    MLflow monitoring run, whose id it returns (None when MLflow was unreachable: the
    features are committed by now, so that costs a warning, not the run). The Prefect
    artifacts come from :func:`drift_artifacts`, on the run the user opens."""
    record_drift(job.table, drift_row(check, job), job.stores)
    run_id = None
    try:
        with tempfile.TemporaryDirectory() as tmp:
            picture = None
            if check.checked:
                from tasks.evaluation.plots import drift_histogram

                picture = drift_histogram(
                    check,
                    f"{job.table}, {job.model_name} v{job.model_version}",
                    Path(tmp) / picture_name(job),
                )
            run_id = log_to_mlflow(check, job, picture)
    except Exception as err:  # MLflow raises several types for a store that went away
        run_logger(log).warning(
            "drift check of %s recorded in the drift table, but not on the MLflow monitoring "
            "run: %s",
            job.table,
            job.stores.redact(str(err).splitlines()[0] if str(err) else type(err).__name__),
        )
    return run_id


def drift_of(job: ScoringJob, parts: list[StagedPart]) -> DriftCheck:
    """The drift check of every partition's rows together, against the job's reference."""
    merged = None
    for found in (p.drift for p in parts if p.drift is not None):
        merged = found if merged is None else merged.merge(found)
    return drift_decision(job.drift_reference, merged)


def monitor_write(job: ScoringJob, parts: list[StagedPart], committed: Committed) -> Committed:
    """After a commit: the written rows' drift check, kept (:func:`record_check`); the
    commit with its check. Nothing when the commit wrote no rows. Runs after the commit
    has landed, so a failure here fails the run but never touches the feature table."""
    if not committed.rows:
        return committed
    check = drift_of(job, parts)
    return dataclasses.replace(committed, drift=check, monitor_run=record_check(check, job))


def drift_artifacts(job: ScoringJob, committed: Committed) -> None:
    """The commit's drift check as artifacts of the run the user opens (the top-level flow
    calls this: not the partitioned write's commit task deep inside it); nothing when no
    rows were written or outside a Prefect run."""
    from prefect.context import FlowRunContext, TaskRunContext

    if committed.drift is None:
        return
    if FlowRunContext.get() is not None or TaskRunContext.get() is not None:
        publish_to_prefect(committed.drift, job, committed.monitor_run)


monitor = io_task("monitor")(monitor_write)
