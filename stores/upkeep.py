"""Bounded disk: what a run may remove from the data store once its work has landed, and what
upkeep (``maintain-features``, ``aepipe features --maintain``) expires.

Every ingest of a changed source is a new folder ``<data>/<dataset>/<fingerprint>/`` (the
raw, quarantine and normalized files, about the source's size or more). A folder is
*superseded* when it is not the one the run just used and no run holds a lease on it: each
run that ingests writes ``.lease-<run id>`` into its folder and removes it when it ends
(:func:`leased`); a run that died leaves its lease, which stops counting after
``orphan_age`` (the same setting after which the tables' unreferenced files count as
orphans). Scoring and training runs remove their data set's superseded ingests once their
commit has landed; upkeep also removes, across every data set, staged partition files and
row-position files older than ``orphan_age``, checkpoints not written for ``orphan_age`` (a
run that has not resumed by then starts again), trained-model folders and Prefect's cached
results older than the tables' retention. It never touches the registered versions'
folders (``<models>/<registered model>/<version>``), the tables, or the data set's newest
ingest, so the next run on an unchanged source still reads its cache.
"""

from __future__ import annotations

import contextlib
import logging
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from stores import Stores
from stores import data as data_store

log = logging.getLogger(__name__)

LEASE_PREFIX = ".lease-"
SCORING = "scoring"  # row positions of a scoring run, under <data>/<dataset>/
CHECKPOINTS = "checkpoints"  # under <models>/<dataset>/
# a trained model's folder (and its pictures) under <models>/<dataset>/: tasks/train.py
INGEST = re.compile(r"[0-9a-f]{16}")  # an ingest folder: the source's fingerprint
TRAINED_RUN = re.compile(r"\d{8}T\d{6}-[0-9a-f]{8}(-plots)?")


@dataclass
class Pruned:
    """What one clean-up removed: folders or files by kind, and the bytes freed."""

    removed: dict[str, int] = field(default_factory=dict)
    freed_bytes: int = 0

    def add(self, kind: str, size: int) -> None:
        """Count one removed entry of ``kind`` holding ``size`` bytes."""
        self.removed[kind] = self.removed.get(kind, 0) + 1
        self.freed_bytes += size

    def note(self) -> str:
        """:meth:`to_text` when anything was removed, else '' (a run's summary line)."""
        return self.to_text() if self.removed else ""

    def to_text(self) -> str:
        """One line: what went, and how much room it gave back."""
        if not self.removed:
            return "data store: nothing to remove"
        what = ", ".join(f"{n} {kind}" for kind, n in sorted(self.removed.items()))
        return f"data store: removed {what}, {self.freed_bytes / 1e6:.1f} MB"


@dataclass(frozen=True)
class _Entry:
    """A file or folder of the data store, as this home and the object store hold it."""

    path: Path  # in this home
    newest: datetime  # the latest modification of anything in it
    size: int
    leases: tuple[datetime, ...] = ()  # when each lease in it was taken


def take_lease(stores: Stores, folder: str | Path, run_id: str | None) -> None:
    """Mark ``folder`` (an ingest) as used by the run ``run_id`` (its top-level Prefect flow
    run) until it ends (:func:`leased`); nothing outside a run."""
    if not run_id:
        return
    path = Path(folder) / f"{LEASE_PREFIX}{run_id}"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(datetime.now(UTC).isoformat())
        data_store.publish(stores, path)
    except OSError as err:  # a full disk: the ingest's own room check says so in one line
        log.warning("could not take a lease on %s (%s)", folder, err)


@contextlib.contextmanager
def leased(stores: Stores, dataset: str, run_id: str | None) -> Iterator[None]:
    """For the length of the run ``run_id``: the ingests it takes leases on stay; at its end,
    whatever its state, its leases on the data set's folders go."""
    try:
        yield
    finally:
        if run_id:
            for folder in _child_names(stores, stores.data_dir / dataset):
                lease = stores.data_dir / dataset / folder / f"{LEASE_PREFIX}{run_id}"
                with contextlib.suppress(OSError):
                    lease.unlink(missing_ok=True)
                    data_store.discard(stores, lease)
                with contextlib.suppress(OSError):  # an ingest that failed: no empty folder
                    lease.parent.rmdir()
            with contextlib.suppress(OSError):
                (stores.data_dir / dataset).rmdir()


def _child_names(stores: Stores, folder: Path) -> set[str]:
    """The names right under ``folder``, here and in the object store (not recursive)."""
    names = {p.name for p in folder.iterdir()} if folder.is_dir() else set()
    key = data_store.remote_path(stores, folder)
    if key is not None:
        import pyarrow.fs as pafs

        fs, _ = data_store.filesystem(stores.data)
        with contextlib.suppress(FileNotFoundError):
            names |= {i.base_name for i in fs.get_file_info(pafs.FileSelector(key))}
    return names


def prune_ingests(
    stores: Stores, dataset: str, keep: str | Path, orphan_age_hours: float
) -> Pruned:
    """Remove the data set's superseded ingest folders: every one but the folder of ``keep``
    (a file of the run's own ingest) that no lease younger than ``orphan_age_hours`` holds;
    called once the run's commit has landed."""
    orphan_age = timedelta(hours=orphan_age_hours)
    keep = Path(keep).parent
    done = Pruned()
    now = datetime.now(UTC)
    try:
        for entry in _children(stores, stores.data_dir / dataset):
            if not INGEST.fullmatch(entry.path.name) or entry.path.resolve() == keep.resolve():
                continue
            if any(now - taken < orphan_age for taken in entry.leases):
                continue  # a run is still reading it (or died less than orphan_age ago)
            _remove(stores, entry, "superseded ingest(s)", done)
    except OSError as err:  # the commit has landed: a clean-up that fails only waits
        log.warning("could not remove %s's superseded ingests (%s); upkeep retries", dataset, err)
    if done.removed:
        log.info("%s of %s", done.to_text(), dataset)
    return done


def maintain_data(
    stores: Stores, retain: timedelta, orphan_age: timedelta, datasets: list[str] | None = None
) -> Pruned:
    """Upkeep of the data store (see the module's text) for ``datasets`` (default: all, and
    Prefect's cached results too): superseded ingests (each data set's newest kept), staged
    parts and row positions older than ``orphan_age``, checkpoints idle that long,
    trained-model folders and cached results older than ``retain``."""
    done = Pruned()
    now = datetime.now(UTC)
    try:
        _maintain(stores, retain, orphan_age, datasets, now, done)
    except OSError as err:  # an object store that stopped answering: what went is counted
        log.warning("data store upkeep stopped early (%s); the next upkeep goes on", err)
    return done


def _maintain(
    stores: Stores,
    retain: timedelta,
    orphan_age: timedelta,
    datasets: list[str] | None,
    now: datetime,
    done: Pruned,
) -> None:
    # the data sets' names only: each is listed in full below, once
    names = _child_names(stores, stores.data_dir) | _child_names(stores, stores.models_dir)
    for name in sorted(names if datasets is None else names & set(datasets)):
        _maintain_data_set(stores, name, retain, orphan_age, now, done)
    if datasets is None:  # shared by every data set: only a whole upkeep expires them
        for entry in _children(stores, stores.data_root / data_store.RESULTS):
            if now - entry.newest > retain:
                _remove(stores, entry, "cached result(s)", done)


def _maintain_data_set(
    stores: Stores,
    name: str,
    retain: timedelta,
    orphan_age: timedelta,
    now: datetime,
    done: Pruned,
) -> None:
    """Upkeep of one data set's ingests, row positions, checkpoints and trained models."""
    data_set = stores.data_dir / name
    ingests = [e for e in _children(stores, data_set) if INGEST.fullmatch(e.path.name)]
    ingests.sort(key=lambda e: e.newest)
    for entry in ingests[:-1]:  # the newest is the next unchanged run's cache
        if not any(now - taken < orphan_age for taken in entry.leases):
            _remove(stores, entry, "superseded ingest(s)", done)
    for entry in ingests[-1:]:
        for staged in _children(stores, entry.path):
            if staged.path.name.startswith("parts-") and now - staged.newest > orphan_age:
                _remove(stores, staged, "staged part folder(s)", done)
    for entry in _children(stores, data_set / SCORING):
        if now - entry.newest > orphan_age:
            _remove(stores, entry, "row-position file(s)", done)
    model_set = stores.models_dir / name
    for entry in _children(stores, model_set / CHECKPOINTS):
        if now - entry.newest > orphan_age:
            _remove(stores, entry, "checkpoint(s)", done)
    for entry in _children(stores, model_set):
        if TRAINED_RUN.fullmatch(entry.path.name) and now - entry.newest > retain:
            _remove(stores, entry, "trained-model folder(s)", done)


def _remove(stores: Stores, entry: _Entry, kind: str, done: Pruned) -> None:
    """Delete ``entry`` here and in the object store, and count it."""
    if entry.path.is_dir():
        shutil.rmtree(entry.path, ignore_errors=True)
    else:
        entry.path.unlink(missing_ok=True)
    data_store.discard(stores, entry.path)
    done.add(kind, entry.size)


def _children(stores: Stores, folder: Path) -> list[_Entry]:
    """The entries right under ``folder``, merged over this home and the object store: for
    each, its newest modification, its bytes and its leases' times."""
    local = _tally(_local_files(folder))
    remote_key = data_store.remote_path(stores, folder)
    remote = _tally(_remote_files(stores, remote_key)) if remote_key else {}
    entries = []
    for name in sorted(local.keys() | remote.keys()):
        views = [v for v in (local.get(name), remote.get(name)) if v is not None]
        leases: dict[str, datetime] = {}
        for v in views:
            for lease, taken in v["leases"].items():
                leases[lease] = max(leases.get(lease, taken), taken)
        entries.append(
            _Entry(
                folder / name,
                max(v["newest"] for v in views),
                max(v["size"] for v in views),
                tuple(leases.values()),
            )
        )
    return entries


def _tally(files: Iterator[tuple[str, datetime, int]]) -> dict[str, dict]:
    """Per entry (the first part of each relative path): newest modification, bytes, leases."""
    found: dict[str, dict] = {}
    for rel, mtime, size in files:
        name, leaf = rel.split("/", 1)[0], rel.rsplit("/", 1)[-1]
        item = found.setdefault(name, {"newest": mtime, "size": 0, "leases": {}})
        if leaf.startswith(LEASE_PREFIX) and leaf != rel:
            item["leases"][leaf] = mtime
            continue
        item["newest"] = max(item["newest"], mtime)
        item["size"] += size
    return found


def _local_files(folder: Path) -> Iterator[tuple[str, datetime, int]]:
    """(path relative to ``folder``, modified, bytes) of every file under it; an empty
    folder as itself."""
    if not folder.is_dir():
        return
    for child in folder.iterdir():
        files = [child] if not child.is_dir() else [p for p in child.rglob("*") if p.is_file()]
        if not files:
            files = [child]
        for f in files:
            with contextlib.suppress(FileNotFoundError):
                st = f.stat()
                size = st.st_size if f.is_file() else 0
                yield f.relative_to(folder).as_posix(), _utc(st.st_mtime), size


def _remote_files(stores: Stores, key: str) -> Iterator[tuple[str, datetime, int]]:
    """The same for the object store's copy of the folder (bucket/key ``key``)."""
    import pyarrow.fs as pafs

    fs, _ = data_store.filesystem(stores.data)
    try:
        infos = fs.get_file_info(pafs.FileSelector(key, recursive=True))
    except FileNotFoundError:
        return
    for info in infos:
        if info.type == pafs.FileType.File:
            mtime = info.mtime or datetime.now(UTC)
            stamp = mtime if mtime.tzinfo else mtime.replace(tzinfo=UTC)
            yield info.path[len(key) :].lstrip("/"), stamp, info.size or 0


def _utc(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)
