"""Table upkeep: expire old snapshots and delete the files no kept snapshot refers to.

Every scoring run adds a snapshot, and a replaced version's files stay for time travel; a
writer killed before its commit leaves staged files nobody will commit. :func:`maintain_table`
expires snapshots older than the retention (pyiceberg's ``expire_snapshots``), keeping the
current one and the last one before the cutoff (what a read as of any time inside the
retention window resolves to), then deletes every file under the table's location that no
kept snapshot and no kept metadata file refers to: the expired snapshots' manifest lists,
manifests and data files, and orphans older than ``orphan_age`` (younger ones may belong to
a write still in flight, whose staged files are unreferenced until it commits).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from feature_store.catalog import (
    FeatureStoreError,
    as_stores,
    commits,
    load_table,
    table_identifier,
)
from stores import NAMESPACE
from stores.space import within

if TYPE_CHECKING:
    from pyiceberg.table import Table

    from stores import Stores

RETAIN = timedelta(days=7)
ORPHAN_AGE = timedelta(days=1)
COMPACT_AT = 4  # small data files in one version's slice that upkeep rewrites as one
SMALL_FILE_BYTES = 32 << 20  # a data file under this is small (a scoring run's append)


@dataclass(frozen=True)
class Maintained:
    """What one maintenance run did to a table."""

    table: str
    expired: int  # commits whose snapshots expired (a replacement's two snapshots: one commit)
    kept: int  # commits kept
    deleted: int  # files deleted: those of expired snapshots, and orphans
    orphans: int  # of them, files no snapshot ever committed (killed writers)
    freed_bytes: int
    cutoff: datetime
    compacted: int = 0  # small data files rewritten as one file per version

    def to_text(self) -> str:
        """The line the CLI and the flow print."""
        return (
            f"{self.table}: expired {self.expired} commit(s) older than "
            f"{self.cutoff.isoformat(timespec='seconds')}, kept {self.kept}; deleted "
            f"{self.deleted} file(s) ({self.orphans} orphaned), {self.freed_bytes / 1e6:.1f} MB"
            + (f"; compacted {self.compacted} small file(s)" if self.compacted else "")
        )


def _path(tbl: Table, location: str) -> str:
    """A file location as the table's file system names it (no scheme)."""
    from pyiceberg.io.pyarrow import PyArrowFileIO

    return PyArrowFileIO.parse_location(location, tbl.io.properties)[2]


def _snapshot_files(tbl: Table, snapshots: list[Any]) -> set[str]:
    """Every file the snapshots refer to: manifest lists, manifests and live data files."""
    files: set[str] = set()
    manifests: set[str] = set()
    for snap in snapshots:
        files.add(_path(tbl, snap.manifest_list))
        for manifest in snap.manifests(tbl.io):
            if manifest.manifest_path in manifests:
                continue
            manifests.add(manifest.manifest_path)
            files.add(_path(tbl, manifest.manifest_path))
            for entry in manifest.fetch_manifest_entry(tbl.io, discard_deleted=True):
                files.add(_path(tbl, entry.data_file.file_path))
    return files


def _metadata_files(tbl: Table) -> set[str]:
    """The current metadata file, those its log keeps, and its statistics files."""
    meta = tbl.metadata
    files = {_path(tbl, tbl.metadata_location)}
    files |= {_path(tbl, e.metadata_file) for e in meta.metadata_log}
    files |= {_path(tbl, s.statistics_path) for s in meta.statistics}
    files |= {_path(tbl, s.statistics_path) for s in meta.partition_statistics}
    return files


def maintain_table(
    table: str,
    *,
    retain: timedelta = RETAIN,
    orphan_age: timedelta = ORPHAN_AGE,
    home: str | os.PathLike[str] | Stores | None = None,
    now: datetime | None = None,
    compact_at: int = COMPACT_AT,
) -> Maintained:
    """Expire the table's snapshots older than ``retain`` and delete the files no kept
    snapshot needs (see the module docstring); returns what was done. Time-travel reads of
    any time within ``retain`` of ``now`` (default: the clock; snapshot ages are measured
    from it) keep working. Orphans' ages are always measured on the clock."""
    import pyarrow.fs as pafs
    from pyiceberg.io.pyarrow import PyArrowFileIO

    if retain < timedelta(0) or orphan_age < timedelta(0):
        raise ValueError("retain and orphan_age must not be negative")
    st = as_stores(home)
    if table_identifier(table).rsplit(".", 1)[0] != NAMESPACE:
        raise FeatureStoreError(
            f"table {table!r} is not in aepipe's namespace {NAMESPACE!r}: upkeep deletes "
            "files, and only of aepipe's own tables"
        )
    compacted = compact_table(load_table(table, st), compact_at) if compact_at else 0
    tbl = load_table(table, st)
    now = now or datetime.now(UTC)
    cutoff = now - retain
    cutoff_ms = int(cutoff.timestamp() * 1000)
    snapshots = {s.snapshot_id: s for s in tbl.snapshots()}
    groups = commits(tbl)  # a replacement's two snapshots are one commit: kept or expired as one
    kept_commits = [g for g in groups if g[-1].timestamp_ms >= cutoff_ms]
    before = [g for g in groups if g[-1].timestamp_ms < cutoff_ms]
    if before:  # a read as of the cutoff (or any later time before the next commit) needs it
        kept_commits.append(before[-1])
    keep = {snap.snapshot_id for g in kept_commits for snap in g}
    current = tbl.current_snapshot()
    if current is not None:
        keep.add(current.snapshot_id)
    expire = [s for s in snapshots if s not in keep]
    expired_commits = sum(1 for g in groups if not keep.intersection(s.snapshot_id for s in g))
    dropped = _snapshot_files(tbl, [snapshots[s] for s in expire]) if expire else set()
    if expire:
        tbl.maintenance.expire_snapshots().by_ids(expire).commit()
        tbl = tbl.refresh()
    needed = _snapshot_files(tbl, tbl.snapshots()) | _metadata_files(tbl)

    scheme, netloc, root = PyArrowFileIO.parse_location(tbl.location(), tbl.io.properties)
    fs = tbl.io.fs_by_scheme(scheme, netloc)
    listed = fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
    orphan_cutoff = datetime.now(UTC) - orphan_age  # file times are the clock's, always
    deleted = orphans = freed = 0
    local = isinstance(fs, pafs.LocalFileSystem)
    for info in listed:
        if info.type != pafs.FileType.File or info.path in needed:
            continue
        if local and not within(info.path, root):  # reached through a link: not the table's
            continue
        if info.path not in dropped:  # never committed (or a metadata file the log let go)
            mtime = info.mtime
            if mtime is None or mtime.replace(tzinfo=mtime.tzinfo or UTC) > orphan_cutoff:
                continue  # may be a write in flight (or its age is unknown)
            orphans += 1
        fs.delete_file(info.path)
        deleted += 1
        freed += info.size or 0
    return Maintained(
        table, expired_commits, len(kept_commits), deleted, orphans, freed, cutoff, compacted
    )


def compact_table(tbl: Table, compact_at: int = COMPACT_AT) -> int:
    """Rewrite each version's small data files as one file, in one commit per version that
    swaps exactly those files (rows and values kept; rows appended meanwhile stay, as they
    are in other files); returns the files rewritten. A slice changed by another
    writer meanwhile is left for the next upkeep."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from pyiceberg.exceptions import CommitFailedException, ValidationException
    from pyiceberg.io.pyarrow import parquet_file_to_data_file

    from feature_store.write import DataFiles, conform

    if tbl.current_snapshot() is None:
        return 0
    slices: dict[tuple, list[Any]] = {}
    for task in tbl.scan().plan_files():
        if task.file.file_size_in_bytes < SMALL_FILE_BYTES:
            slices.setdefault(tuple(task.file.partition), []).append(task.file)
    target = tbl.schema().as_arrow()
    rewritten = 0
    for key, files in sorted(slices.items()):
        if len(files) < compact_at:
            continue
        parts = []
        for f in files:
            with tbl.io.new_input(f.file_path).open() as stream:
                parts.append(conform(pq.read_table(stream), target))
        writer = DataFiles(tbl)
        try:
            writer.write(pa.concat_tables(parts))
            new = [parquet_file_to_data_file(tbl.io, tbl.metadata, p) for p in writer.close()]
            summary = {"aepipe.mode": "compact"}
            if key:  # a feature table's slice: (model name, version)
                summary["aepipe.model_version"] = str(key[-1])
            with (
                tbl.transaction() as tx,
                tx.update_snapshot(snapshot_properties=summary).overwrite() as ow,
            ):
                for f in files:
                    ow.delete_data_file(f)
                for f in new:
                    ow.append_data_file(f)
        except (CommitFailedException, ValidationException):
            writer.remove()  # another writer changed the slice: next time
            tbl = tbl.refresh()
            continue
        except BaseException:
            writer.remove()
            raise
        rewritten += len(files)
        tbl = tbl.refresh()
    return rewritten
