"""Iceberg tables: ``source.path`` the table's ``namespace.table``, ``source.catalog`` its
catalog (a SQL URI or a REST catalog's URL, of a catalog named ``aepipe``; or the name of
a catalog configured for pyiceberg, ``.pyiceberg.yaml`` or ``PYICEBERG_CATALOG__<NAME>__*``;
default: aepipe's own), read with pyiceberg's scan as a stream of Arrow record batches.

A table's snapshots are immutable, so its current snapshot id is both its fingerprint and
its content digest: a run on an unchanged table reads nothing, and any commit is seen."""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from tasks.io.readers.base import IngestPart, ReadPlan, SourceReader

if TYPE_CHECKING:
    from pyiceberg.table import Table

    from tasks.config import SourceConfig


def catalog_of(src: SourceConfig) -> Any:
    """The catalog ``source.catalog`` names (aepipe's own when unset), loaded by pyiceberg."""
    from stores import resolve_stores

    uri = src.catalog or resolve_stores().catalog_uri
    # a local SQLite catalog is kept for the process (a run asks for it a few times: its
    # columns, fingerprint, plan, batches); a server's is opened each time, so no idle
    # connection to it outlives the call
    return _kept_catalog(uri) if uri.startswith("sqlite:") else _catalog(uri)


@functools.lru_cache(maxsize=8)
def _kept_catalog(uri: str) -> Any:
    return _catalog(uri)


def _catalog(uri: str) -> Any:
    """The catalog at ``uri``, loaded by pyiceberg."""
    from pyiceberg.catalog import load_catalog

    from stores import catalog_kind
    from stores.remote import fileio_properties

    kind = catalog_kind(uri)
    if kind == "named":
        return load_catalog(uri)
    props = {"type": kind, "uri": uri, **fileio_properties()}
    # a SQL catalog keys its tables by the catalog's name: aepipe's catalogs are "aepipe";
    # another name is configured for pyiceberg and named in source.catalog instead
    return load_catalog("aepipe", **props)


SNAPSHOT_PART, APPENDED_PART = "snapshot:", "appended:"  # what a partition's files[0] reads


def _check_appended(tbl: Table, since: int, now: int, name: str) -> None:
    """An IncrementalUnavailable unless ``since`` is an ancestor of ``now`` (not expired,
    not on another branch) and every snapshot after it only appended rows."""
    from pyiceberg.table.snapshots import ancestors_between

    from tasks.io.readers.base import IncrementalUnavailable

    if since == now:
        raise IncrementalUnavailable(f"Iceberg table {name!r} has no commit since snapshot {since}")
    if tbl.snapshot_by_id(since) is None:
        raise IncrementalUnavailable(
            f"snapshot {since} of Iceberg table {name!r}, the last one read, has expired"
        )
    between = list(
        ancestors_between(tbl.snapshot_by_id(since), tbl.snapshot_by_id(now), tbl.metadata)
    )
    if not between or between[-1].snapshot_id != since:
        raise IncrementalUnavailable(
            f"snapshot {since} of Iceberg table {name!r} is not an ancestor of the current one"
        )
    changed = [
        s for s in between[:-1] if s.summary is None or s.summary.operation.value != "append"
    ]
    if changed:
        raise IncrementalUnavailable(
            f"Iceberg table {name!r} had a {changed[0].summary.operation.value} commit since "
            f"snapshot {since}, not only appends"
        )


class IcebergReader(SourceReader):
    """An Iceberg table, scanned at its current snapshot."""

    name = "iceberg"

    def claims(self, path: str) -> bool:
        """Never from the name alone: ``namespace.table`` looks like a file name."""
        return False

    def table(self, src: SourceConfig) -> Table:
        """The table; a ConfigError naming it (or the catalog) when it cannot be loaded."""
        from pyiceberg.exceptions import NoSuchTableError

        from stores import redact_uri
        from tasks.errors import ConfigError

        if "." not in src.path:
            raise ConfigError(
                f"an Iceberg source.path is the table's namespace.table, not {src.path!r}"
            )
        try:
            catalog = catalog_of(src)
        except Exception as err:  # pyiceberg and its drivers raise their own types
            first = str(err).splitlines()[0] if str(err) else type(err).__name__
            where = redact_uri(src.catalog) if src.catalog else "aepipe's own catalog"
            raise ConfigError(f"cannot open the Iceberg catalog {where}: {first}") from None
        try:
            return catalog.load_table(src.path)
        except NoSuchTableError:
            raise ConfigError(f"Iceberg table {src.path!r} does not exist in its catalog") from None

    def check_exists(self, src: SourceConfig) -> None:
        """The table loads and has a snapshot (a table never written has no rows)."""
        from tasks.errors import ConfigError

        if self.table(src).current_snapshot() is None:
            raise ConfigError(f"Iceberg table {src.path!r} has no rows (no snapshot yet)")

    def columns(self, src: SourceConfig, listing: list[str] | None = None) -> list[str]:
        """The table's column names; nested columns refused unless excluded."""
        from tasks.errors import ConfigError

        schema = self.table(src).schema().as_arrow()
        nested = [f.name for f in schema if pa.types.is_nested(f.type)]
        refused = [c for c in nested if c not in src.exclude]
        if refused:
            raise ConfigError(
                f"column(s) {refused} of Iceberg table {src.path!r} are nested (structs, lists, "
                "maps); add them to source.exclude"
            )
        return list(schema.names)

    def marker(self, src: SourceConfig) -> str | None:
        """The current snapshot's id: later runs read the rows appended after it."""
        snapshot = self.table(src).current_snapshot()
        return None if snapshot is None else str(snapshot.snapshot_id)

    def plan(
        self,
        src: SourceConfig,
        partition_rows: int,
        listing: list[str] | None = None,
        since: str | None = None,
    ) -> ReadPlan:
        """The current snapshot, pinned (a commit meanwhile is the next run's); with
        ``since``, the rows appended after that snapshot, when it is still an ancestor of
        the current one and only appends came after it. With an entity id, the data files
        are grouped into partitions of about ``partition_rows`` rows (their record counts)
        for the task runner."""
        tbl = self.table(src)
        now = tbl.current_snapshot()
        if now is None:
            return ReadPlan([IngestPart(0, [SNAPSHOT_PART])])
        if since is None:
            what = f"{SNAPSHOT_PART}{now.snapshot_id}"
        else:
            _check_appended(tbl, int(since), now.snapshot_id, src.path)
            what = f"{APPENDED_PART}{since}:{now.snapshot_id}"
        parts = [IngestPart(0, [what])]
        if src.entity_id:  # (default ids are row numbers: one partition keeps them)
            parts = _file_groups(what, _scan(tbl, what, ()).plan_files(), partition_rows)
        return ReadPlan(parts, marker=str(now.snapshot_id))

    def items(
        self,
        src: SourceConfig,
        part: IngestPart | None,
        needed: list[str],
        sample: bool = False,
    ) -> Iterator[pa.RecordBatch]:
        """The ``needed`` columns of the partition's snapshot, or of the rows appended
        between its two snapshots, batch by batch (the current snapshot's first 65,536 rows
        when ``sample``)."""
        from pyiceberg.io.pyarrow import ArrowScan

        tbl = self.table(src)
        what = part.files[0] if part is not None and part.files else SNAPSHOT_PART
        if sample:
            what = SNAPSHOT_PART
        scan = _scan(tbl, what, tuple(needed), 65536 if sample else None)
        if part is None or len(part.files) < 2 or sample:
            yield from scan.to_arrow_batch_reader()
            return
        wanted = set(part.files[1:])  # this partition's data files
        tasks = [t for t in scan.plan_files() if t.file.file_path in wanted]
        arrow = ArrowScan(
            scan.table_metadata, scan.io, scan.projection(), scan.row_filter, scan.case_sensitive
        )
        yield from arrow.to_record_batches(tasks)

    def files(self, src: SourceConfig) -> list[str]:
        """None of its own: the catalog names them."""
        return []

    def stat_digest(self, src: SourceConfig, listing: list[str] | None = None) -> str:
        """The table's identity and current snapshot."""
        tbl = self.table(src)
        snapshot = tbl.current_snapshot()
        return f"{tbl.metadata.table_uuid} snapshot {snapshot.snapshot_id if snapshot else None}"

    def content_digest(self, src: SourceConfig) -> str:
        """The snapshot names its content exactly: no read needed."""
        return hashlib.sha256(self.stat_digest(src).encode()).hexdigest()

    def merged_digest(self, src: SourceConfig, part_digests: list[str]) -> str:
        """The snapshot's digest."""
        return self.content_digest(src)

    def write_bound(self, src: SourceConfig, plan: Any) -> int:
        """Twice the data files' bytes (the snapshot's summary counts them): the partition's
        file and the merged copy, each about as large (Parquet both)."""
        snapshot = self.table(src).current_snapshot()
        summary = snapshot.summary if snapshot is not None else None
        return 2 * int((summary.get("total-files-size") if summary else None) or 0)


def _scan(tbl: Any, what: str, fields: tuple[str, ...], limit: int | None = None) -> Any:
    """The scan a partition names: the current snapshot (``SNAPSHOT_PART`` alone), a pinned
    one, or the rows appended between two snapshots."""
    if what.startswith(APPENDED_PART):
        since, upto = (int(v) for v in what.removeprefix(APPENDED_PART).split(":"))
        return tbl.incremental_append_scan(
            from_snapshot_id_exclusive=since, to_snapshot_id_inclusive=upto, selected_fields=fields
        )
    snapshot = what.removeprefix(SNAPSHOT_PART)
    if not snapshot:
        return tbl.scan(selected_fields=fields, limit=limit)
    return tbl.scan(selected_fields=fields, snapshot_id=int(snapshot), limit=limit)


def _file_groups(what: str, tasks: Any, partition_rows: int) -> list[IngestPart]:
    """The scan's data files in groups of about ``partition_rows`` rows, a partition each
    (each named by the scan and its files)."""
    parts: list[IngestPart] = []
    group: list[str] = []
    rows = 0
    for task in tasks:
        if group and rows + task.file.record_count > partition_rows:
            parts.append(IngestPart(len(parts), [what, *group]))
            group, rows = [], 0
        group.append(task.file.file_path)
        rows += task.file.record_count
    parts.append(IngestPart(len(parts), [what, *group]))
    return parts


READER = IcebergReader()
