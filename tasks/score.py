"""Incremental scoring: new source rows through the champion, appended to the feature table.

"New" means: rows whose key the champion's rows in the feature table do not hold yet. The key
is (entity id, event time) when the source names a timestamp column, so an update of a known
entity (a new time), a new entity and a late row (an earlier time not yet scored) are all new;
otherwise it is the entity id (new files in a folder, new rows at the end of a file, new image
files). An append-only source (``source.append_only``) takes a fast path: rows after the last
scored time, checked against the table's row count. The
champion's own normalizer (its JSON spec, logged with the model) prepares the rows, so scoring
applies exactly the transform the model was trained with.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from prefect import task

from ae_models.preprocessing.normalizer import NORMALIZER_FILE
from ae_models.preprocessing.tensor_column import find_tensor
from ae_models.vocabulary import ENTITY_KEY, EVENT_TIMESTAMP, MODEL_VERSION
from feature_store import FeatureStoreError, load_table
from feature_store.schema import TIMESTAMP
from stores import Stores
from stores import data as data_store
from tasks import registry
from tasks.config import ConfigError, PipelineConfig
from tasks.incremental import marker_properties
from tasks.logs import run_logger
from tasks.runners import io_task
from tasks.scored import Scored
from tasks.scoring_job import Committed, ModelRef, ScoringJob, new_job, save_row_positions
from tasks.stages import IngestResult
from tasks.write_features import write_in_process

if TYPE_CHECKING:
    from pyiceberg.table import Table

log = logging.getLogger(__name__)

Champion = ModelRef  # the registered version that scores new data, and its model folder


def load_champion(cfg: PipelineConfig, stores: Stores) -> Champion:
    """Find the champion of the data set's registered model and fetch its model folder
    (weights, config, normalizer spec) from MLflow into ``<models>/<name>/<version>``, and
    onto an object-store ``AEPIPE_DATA`` for the partition workers."""
    mv = registry.champion_version(cfg.model_name, stores)
    folder = stores.models_dir / cfg.model_name / str(mv.version)
    registry.download_version(cfg.model_name, mv.version, folder, stores.models_dir)
    champion = Champion(cfg.model_name, int(mv.version), mv.run_id, str(folder))
    data_store.share_once(stores, champion)  # a version's folder never changes
    return champion


@dataclass(frozen=True)
class NewRows:
    """Which source rows a scoring run scores: all of them (``rows`` and ``after`` None), the
    row positions in the Parquet file ``rows``, or those after the event time ``after`` (the
    append-only fast path); ``how`` says which, for the run's log."""

    rows: str | None
    after: str | None
    how: str


def _watermark(tbl: Table, version: int) -> tuple[datetime | None, int]:
    """The latest event time a version has scored and its row count, from the data files'
    statistics in the table's manifests (no data read); None when it has no files or a file
    lacks them."""
    from pyiceberg.conversions import from_bytes
    from pyiceberg.expressions import EqualTo
    from pyiceberg.types import TimestamptzType

    files = [t.file for t in tbl.scan(row_filter=EqualTo(MODEL_VERSION, version)).plan_files()]
    field_id = tbl.schema().find_field(EVENT_TIMESTAMP).field_id
    uppers = [(f.upper_bounds or {}).get(field_id) for f in files]
    rows = sum(f.record_count for f in files)
    if not uppers or any(u is None for u in uppers):
        return None, rows
    micros = max(from_bytes(TimestamptzType(), u) for u in uppers)
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=micros), rows


def find_new_rows(
    source: str, table: str, version: int, cfg: PipelineConfig, stores: Stores
) -> NewRows:
    """The rows of the ingested ``source`` the version has not scored yet.

    The key is (entity id, event time) when the source names a timestamp column, else the
    entity id. Rows whose key the version's rows already hold are left out, so updates
    (a new time for a known id), new entities and late rows (an earlier time, not yet
    scored) are all scored once. Cost: the version's key columns are read from the table and
    joined with the source's (a hash join; about a second per million rows). With
    ``source.append_only`` the table's statistics give its latest event time and row count;
    when the source holds exactly that many rows up to that time, only later rows are new
    (nothing read from the table); otherwise rows arrived late and the full comparison runs.
    """
    try:
        tbl = load_table(table, stores)
    except FeatureStoreError:
        return NewRows(None, None, "all rows (no feature table yet)")
    versioned = cfg.source.timestamp is not None
    if versioned and cfg.source.append_only:
        mark, scored = _watermark(tbl, version)
        if mark is not None:
            times = pq.read_table(source, columns=[EVENT_TIMESTAMP]).column(0)
            upto = pc.sum(pc.less_equal(times, pa.scalar(mark, TIMESTAMP))).as_py() or 0
            if upto == scored:
                return NewRows(None, mark.isoformat(), f"rows after {mark.isoformat()}")
            run_logger(log).warning(
                "append-only source %s holds %d rows up to %s where the table has %d: rows "
                "arrived late or were removed; comparing every (id, time) pair instead",
                source,
                upto,
                mark.isoformat(),
                scored,
            )
    keys = [ENTITY_KEY, EVENT_TIMESTAMP] if versioned else [ENTITY_KEY]
    from pyiceberg.expressions import EqualTo

    done = tbl.scan(
        row_filter=EqualTo(MODEL_VERSION, version), selected_fields=tuple(keys)
    ).to_arrow()
    if done.num_rows == 0:
        return NewRows(None, None, f"all rows (version {version} has none in the table)")
    src = pq.read_table(source, columns=keys)
    src = src.append_column(_POSITION, pa.array(np.arange(src.num_rows, dtype=np.int64)))
    casts = {ENTITY_KEY: pa.string(), EVENT_TIMESTAMP: TIMESTAMP}
    src = src.cast(pa.schema([pa.field(k, casts[k]) for k in keys] + [src.schema.field(_POSITION)]))
    done = done.cast(pa.schema([pa.field(k, casts[k]) for k in keys])).combine_chunks()
    new = src.join(done, keys=keys, join_type="left anti", use_threads=True)
    positions = np.sort(new.column(_POSITION).to_numpy())
    path = save_row_positions(positions, stores.data_dir / cfg.dataset / "scoring")
    data_store.share(stores, path)  # the partition workers read it
    what = "(entity id, event time) pairs" if versioned else "entity ids"
    return NewRows(path, None, f"{len(positions)} rows whose {what} the table lacks")


_POSITION = "__position"


# what each of the normalizer's column kinds reads (tasks.io.tables.type_class of the raw
# Parquet column the ingest wrote: numbers as float64 or pixels, booleans, text)
KIND_HOLDS = {"scaled": "number", "numeric": "number", "boolean": "boolean", "categorical": "text"}


def check_source_shape(ingested: IngestResult, champion: Champion) -> None:
    """Before anything is scored: the source still has every column the champion was trained
    on, each holding the kind of value it held then (a ConfigError naming the columns and
    both kinds: a number column turned text is not scored as unseen categories); columns
    the champion does not know are logged and ignored."""
    from ae_models.preprocessing.normalizer import Normalizer
    from tasks.io.tables import type_class

    spec = Normalizer.load(Path(champion.model_dir) / NORMALIZER_FILE)
    schema = pq.read_schema(ingested.path)
    model = f"{champion.model_name} v{champion.version}"
    tensor = find_tensor(schema)
    if tensor is not None:  # pixels in one column of bytes: the shape is their count
        if not spec.fixed_scale or len(spec.columns) != tensor.width:
            trained = f"{len(spec.columns)} {'pixels' if spec.fixed_scale else 'table columns'}"
            raise ConfigError(
                f"the source holds {tensor.width} pixels a row; {model} was trained on "
                f"{trained}; retrain on the new shape"
            )
        return
    missing = [c for c in spec.source_columns if c not in schema.names]
    if missing:
        raise ConfigError(
            f"the source lacks {len(missing)} column(s) {model} was trained on: "
            f"{missing[:10]}; restore them, or retrain on the new shape"
        )
    changed = [
        f"{c.source!r} ({KIND_HOLDS[c.kind]} then, {now} now)"
        for c in spec.columns
        if (now := type_class(schema.field(c.source).type)) not in (KIND_HOLDS[c.kind], "null")
    ]
    if changed:
        raise ConfigError(
            f"{len(changed)} column(s) hold another kind of value than when {model} was "
            f"trained: {', '.join(changed[:10])}; fix the source, or retrain on the new shape"
        )
    known = set(spec.source_columns)
    extra = [c for c in ingested.features if c not in known]
    if extra:
        run_logger(log).warning(
            "ignoring %d column(s) %s was not trained on: %s (retrain to use them)",
            len(extra),
            model,
            extra[:10],
        )


def scoring_job(
    ingested: IngestResult, champion: Champion, cfg: PipelineConfig, stores: Stores
) -> ScoringJob:
    """The job that appends the champion's features for the source rows it has not scored
    (:func:`find_new_rows`), once the source's shape is checked against the champion's."""
    check_source_shape(ingested, champion)
    new = find_new_rows(ingested.path, cfg.dataset, champion.version, cfg, stores)
    if ingested.since is not None:  # said first: what was read, then what was new in it
        new = dataclasses.replace(
            new, how=f"{ingested.rows} rows read past {ingested.since}, of which {new.how}"
        )
    run_logger(log).info(
        "scoring %s with %s v%d: %s", cfg.dataset, champion.model_name, champion.version, new.how
    )
    return new_job(
        champion,
        cfg,
        stores,
        source=ingested.path,
        mode="append",
        device=cfg.train.device,
        normalizer=str(Path(champion.model_dir) / NORMALIZER_FILE),
        rows=new.rows,
        after=new.after,
        selection=new.how,
        properties={"source_fingerprint": ingested.fingerprint, **marker_properties(ingested, cfg)},
    )


def scored_summary(job: ScoringJob, ingested: IngestResult, committed: Committed) -> Scored:
    """What a scoring run did, from its job and commit."""
    if job.rows:
        Path(job.rows).unlink(missing_ok=True)
    return Scored(
        job.table,
        job.model_name,
        job.model_version,
        ingested.rows,
        committed.rows,
        committed.anomalies,
        job.selection,
        committed.snapshot_id,
        committed.drift,
        ingested.quarantine_note(),
    )


def score_new_rows(
    ingested: IngestResult, champion: Champion, cfg: PipelineConfig, stores: Stores
) -> Scored:
    """Score the new rows in this process, partition after partition, and append them in one
    commit (the score-features flow runs the partitions as tasks instead): for benchmarks
    and tests of the scoring itself, without Prefect."""
    with registry.scoring_lock(stores, cfg.dataset):  # see flows/score_features.py
        job = scoring_job(ingested, champion, cfg, stores)
        committed = write_in_process(job)
    return scored_summary(job, ingested, committed)


DRIFT_EVENT = "aepipe.drift.detected"


def drift_listeners() -> list[str]:
    """The deployments (``flow/deployment``) whose enabled trigger runs on
    ``aepipe.drift.detected`` on the Prefect server this process talks to; [] when none
    (a temporary server, no ``prefect deploy`` or ``aepipe serve``, the trigger off)."""
    from prefect.client.orchestration import get_client
    from prefect.events.actions import RunDeployment

    names = []
    with get_client(sync_client=True) as client:
        for automation in client.read_automations():
            expects = getattr(automation.trigger, "expect", set()) or set()
            if not automation.enabled or DRIFT_EVENT not in expects:
                continue
            for action in automation.actions:
                if isinstance(action, RunDeployment) and action.deployment_id is not None:
                    deployment = client.read_deployment(action.deployment_id)
                    flow = client.read_flow(deployment.flow_id)
                    names.append(f"{flow.name}/{deployment.name}")
    return names


def retrain_note(scored: Scored, cfg: PipelineConfig, emitted: bool) -> str:
    """One line on what follows the drift a run found: the deployment that will retrain,
    or that none listens and what to start; '' when no drift was found."""
    if scored.drift is None or not scored.drift.drifted:
        return ""
    if not cfg.drift.retrain:
        return "retrain: off (drift.retrain false): run `aepipe run` to retrain by hand"
    listeners = drift_listeners() if emitted else []
    if listeners:
        return (
            f"retrain: emitted {DRIFT_EVENT} for aepipe.dataset.{cfg.dataset}; "
            f"{', '.join(listeners)} will retrain it"
        )
    return (
        f"retrain: emitted {DRIFT_EVENT}, but no deployment on this Prefect server listens "
        "for it (a temporary server, or the trigger off): start `prefect server start` with "
        "`prefect deploy --all` and a worker, or `aepipe serve`, to retrain on drift; or run "
        "`aepipe run` now"
    )


def announce_drift(scored: Scored, cfg: PipelineConfig) -> bool:
    """Emit the Prefect event ``aepipe.drift.detected`` for the data set when the run found
    drift and ``drift.retrain`` is on: the resource ``aepipe.dataset.<name>``, the check's
    evidence and what the reduce-features trigger retrains (``retrain``: the data set and the
    model version, names only; the retrain loads that version's config from the tracking
    store) as its payload. Whether an event was emitted."""
    if scored.drift is None or not scored.drift.drifted or not cfg.drift.retrain:
        return False
    from prefect.events import emit_event

    check = scored.drift
    emit_event(
        event=DRIFT_EVENT,
        resource={
            "prefect.resource.id": f"aepipe.dataset.{cfg.dataset}",
            "prefect.resource.name": cfg.dataset,
        },
        related=[
            {
                "prefect.resource.id": f"aepipe.model.{scored.model_name}.{scored.model_version}",
                "prefect.resource.role": "model",
            }
        ],
        payload={
            "rows": check.rows,
            "score_p_value": check.score_p_value,
            "flagged_rate": check.flagged_rate,
            "expected_rate": check.expected_rate,
            "drifted_columns": list(check.drifted_columns),
            "retrain": {
                "dataset": cfg.dataset,
                "registered_model": scored.model_name,
                "version": scored.model_version,
            },
        },
    )
    return True


def score_report(scored: Scored) -> None:
    """The scoring run's report as a Prefect artifact on its flow run (what the CLI prints),
    under the key ``aepipe-score-<dataset>`` so a data set's reports line up."""
    from prefect.artifacts import create_markdown_artifact

    key = "aepipe-score-" + scored.table.replace("_", "-").lower()
    create_markdown_artifact(f"```\n{scored.to_text()}\n```", key=key)


champion = io_task("load-champion")(load_champion)
prepare_scoring = task(name="prepare-scoring")(scoring_job)
