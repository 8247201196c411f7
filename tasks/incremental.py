"""Incremental reads: a scoring run reads only what the source gained since the last run
read it, where the source's reader can say what that is (an Iceberg table's appended
snapshots, a SQL watermark column, a Parquet folder's newer files).

Each commit to the feature table records where the source stood when its rows were read
(``aepipe.source_marker`` in the snapshot's summary, beside a digest of the source
settings). The next scoring run of that model version reads past that marker; the (entity
id, event time) comparison with the table then runs on those rows alone. Where the marker
cannot be used (no entity id column, other source settings, an expired snapshot, a commit
that was not an append), the whole source is read and compared, and the run says why.
"""

from __future__ import annotations

import logging

from feature_store import FeatureStoreError, load_table
from stores import Stores
from tasks.config import PipelineConfig
from tasks.io.readers import reader_of
from tasks.io.readers.base import IncrementalUnavailable
from tasks.io.sources import json_digest
from tasks.logs import run_logger
from tasks.stages import IngestResult

log = logging.getLogger(__name__)

MARKER, SETTINGS = "source_marker", "source_settings"  # snapshot summary keys (aepipe.*)


def settings_digest(cfg: PipelineConfig) -> str:
    """What a marker is only good for: these source settings."""
    return json_digest(cfg.source.model_dump())[:16]


def marker_properties(ingested: IngestResult, cfg: PipelineConfig) -> dict[str, str]:
    """The snapshot properties a commit of ``ingested``'s rows records: where the source
    stood when they were read (none when its reader cannot say)."""
    if ingested.marker is None:
        return {}
    return {MARKER: ingested.marker, SETTINGS: settings_digest(cfg)}


def last_marker(cfg: PipelineConfig, stores: Stores, version: int) -> str | None:
    """The marker the version's newest commit recorded, when it was made with these source
    settings; None otherwise."""
    try:
        tbl = load_table(cfg.dataset, stores)
    except FeatureStoreError:
        return None
    for snap in sorted(tbl.snapshots(), key=lambda s: s.timestamp_ms, reverse=True):
        summary = snap.summary
        if summary is None or summary.get("aepipe.model_version") != str(version):
            continue
        if summary.get(f"aepipe.{SETTINGS}") != settings_digest(cfg):
            return None
        return summary.get(f"aepipe.{MARKER}")
    return None


def whole_fingerprint(ingested: IngestResult, cfg: PipelineConfig) -> str:
    """The whole source's fingerprint (an incremental ingest's names the rows it read)."""
    if ingested.since is None:
        return ingested.fingerprint
    from tasks.io.sources import source_fingerprint

    return source_fingerprint(cfg)


def incremental_since(cfg: PipelineConfig, stores: Stores, version: int) -> str | None:
    """The marker a scoring run of ``version`` can read past, or None (the whole source is
    read and compared; a log line says why when a marker was there but cannot be used)."""
    if not cfg.source.entity_id:
        return None  # default ids are row numbers: a read of new rows alone would renumber
    since = last_marker(cfg, stores, version)
    if since is None:
        return None
    src = cfg.source
    try:  # cheap for every reader that has markers: metadata, a count, a listing
        reader_of(src).plan(src, cfg.partition_rows, None, since)
    except IncrementalUnavailable as why:
        run_logger(log).info("reading all of %r and comparing: %s", src.path, why)
        return None
    return since
