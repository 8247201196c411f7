"""What a scoring run did, and the note it leaves so the next run on an unchanged source
answers "nothing new" before it pays for a Prefect server, an ingest or a table scan.

The note (``<data>/<dataset>/last-score.json``, in the data store so every home and worker
reads the same one) holds the source's fingerprint, a digest of the run's settings, the
champion version and the table snapshot the run left behind. The next run is answered from
it only when all four are still the same: the same bytes (or, with ``source.fingerprint:
stat``, the same sizes and modification times), the same settings, the same champion, and a
table nobody committed to since (another scoring run, a training run, maintenance). Anything
else runs the whole flow, which writes the note again. This module imports neither torch nor
Prefect: the CLI calls it before either is loaded.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from stores import Stores
from stores import data as data_store
from tasks.config import PipelineConfig

if TYPE_CHECKING:
    from ae_models.scoring.drift import DriftCheck

log = logging.getLogger(__name__)

NOTE_FILE = "last-score.json"


@dataclass(frozen=True)
class Scored:
    """What one scoring run did: rows seen in the source, rows new and written, the commit."""

    table: str
    model_name: str
    model_version: int
    rows_seen: int
    rows_written: int
    anomalies: int
    selection: str  # which rows were taken as new, and how they were found
    snapshot_id: int | None
    drift: DriftCheck | None = None  # the new rows against the model's reference
    quarantine_note: str = ""  # " (+N quarantined: reasons; path)": source rows set aside
    retrain: str = ""  # what happens about the drift found: who retrains, or what to start
    pruned: str = ""  # what the run removed from the data store once its commit landed

    def to_text(self) -> str:
        """The lines the CLI prints at the end of a scoring run."""
        where = f"{self.table} (model {self.model_name} v{self.model_version})"
        if not self.rows_written:
            lines = [
                f"no new rows in the source ({self.rows_seen} rows{self.quarantine_note}, all "
                f"scored already: {self.selection}); nothing written to {where}"
            ]
        else:
            # an incremental run read only the rows past the last run's marker: says so
            past = self.selection.startswith(f"{self.rows_seen} rows read past ")
            seen = "rows read since the last run" if past else "source rows"
            lines = [
                f"scored {self.rows_written} new of {self.rows_seen} {seen}"
                f"{self.quarantine_note} into {where}: {self.anomalies} flagged as anomalies; "
                f"snapshot {self.snapshot_id}",
                self.drift.to_text() if self.drift is not None else "",
                self.retrain,
            ]
        return "\n".join(line for line in [*lines, self.pruned] if line)


def note_path(cfg: PipelineConfig, stores: Stores) -> Path:
    """Where the data set's last scoring run leaves its note."""
    return stores.data_dir / cfg.dataset / NOTE_FILE


def settings_digest(cfg: PipelineConfig) -> str:
    """A digest of every setting of the run but its home (two homes on one data store share
    the note; any other change of settings runs the whole flow once)."""
    settings = cfg.model_dump(mode="json", exclude={"home"})
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def remember_scoring(scored: Scored, fingerprint: str, cfg: PipelineConfig, stores: Stores) -> None:
    """Leave the note for the next run; called while the run still holds the data set's
    scoring lock, so the snapshot it names is the one this run left (nobody else's)."""
    snapshot = scored.snapshot_id if scored.rows_written else _current_snapshot(cfg, stores)
    if snapshot is None:
        return  # no table: the next run scores everything anyway
    note = {
        "fingerprint": fingerprint,
        "settings": settings_digest(cfg),
        "model_name": scored.model_name,
        "model_version": scored.model_version,
        "snapshot_id": snapshot,
        "table": scored.table,
        "rows_seen": scored.rows_seen,
        "quarantine_note": scored.quarantine_note,
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    try:
        data_store.write_note(stores, note_path(cfg, stores), json.dumps(note).encode())
    except OSError as err:  # the commit has landed: without a note the next run compares
        log.warning("could not leave the scoring note (%s); the next run scores in full", err)


def unchanged_scoring(
    cfg: PipelineConfig, stores: Stores, version: int | None = None
) -> Scored | None:
    """The answer of a scoring run with nothing to do, from the last run's note, when the
    source, the settings, the champion and the table are all as that run left them; None when
    anything differs, there is no note or a store does not answer (the whole flow runs, and
    says what is wrong). The champion is ``version`` (the registry's, when the caller asked
    MLflow), else the one the table recorded (``aepipe.alias.champion``, as the feature
    store's readers resolve it), so the CLI answers without importing MLflow."""
    from tasks.io.sources import source_fingerprint

    try:
        raw = data_store.read_note(stores, note_path(cfg, stores))
        table = _table_state(cfg, stores) if raw is not None else None
    except Exception as err:  # a store that does not answer: the whole flow's checks name it
        log.debug("no quick answer from the scoring note: %s", err)
        return None
    if raw is None or table is None:
        return None
    snapshot, recorded = table
    try:
        note = json.loads(raw)
        same = (
            note["model_name"] == cfg.model_name
            and note["model_version"] == (recorded if version is None else int(version))
            and note["settings"] == settings_digest(cfg)
            and note["snapshot_id"] == snapshot  # nobody committed since
        )
    except (ValueError, KeyError, TypeError):
        log.warning("ignoring an unreadable scoring note %s", note_path(cfg, stores))
        return None
    if not same or note["fingerprint"] != source_fingerprint(cfg):
        return None
    fields = {k: note[k] for k in ("table", "model_name", "model_version", "rows_seen")}
    return Scored(
        **fields,
        rows_written=0,
        anomalies=0,
        selection=f"the source is unchanged since the scoring run of {note['at']}",
        snapshot_id=note["snapshot_id"],
        quarantine_note=note["quarantine_note"],
    )


def _table_state(cfg: PipelineConfig, stores: Stores) -> tuple[int | None, int | None] | None:
    """The data set's feature table's current snapshot id and the champion version it
    recorded; None without a table."""
    from feature_store import FeatureStoreError, load_table
    from feature_store.catalog import recorded_aliases
    from tasks.registry import CHAMPION

    try:
        tbl = load_table(cfg.dataset, stores)
    except FeatureStoreError:
        return None
    snapshot = tbl.current_snapshot()
    return (snapshot.snapshot_id if snapshot else None), recorded_aliases(tbl).get(CHAMPION)


def _current_snapshot(cfg: PipelineConfig, stores: Stores) -> int | None:
    """The data set's feature table's current snapshot id; None without table or snapshot."""
    state = _table_state(cfg, stores)
    return state[0] if state else None
