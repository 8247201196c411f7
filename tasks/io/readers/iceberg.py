"""Iceberg tables: ``source.path`` the table's ``namespace.table``, ``source.catalog`` its
catalog (a SQL URI or a REST catalog's URL, of a catalog named ``aepipe``; or the name of
a catalog configured for pyiceberg, ``.pyiceberg.yaml`` or ``PYICEBERG_CATALOG__<NAME>__*``;
default: aepipe's own), read with pyiceberg's scan as a stream of Arrow record batches.

A table's snapshots are immutable, so its current snapshot id is both its fingerprint and
its content digest: a run on an unchanged table reads nothing, and any commit is seen."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from tasks.io.readers.base import IngestPart, SourceReader

if TYPE_CHECKING:
    from pyiceberg.table import Table

    from tasks.config import SourceConfig


def catalog_of(src: SourceConfig) -> Any:
    """The catalog ``source.catalog`` names (aepipe's own when unset), loaded by pyiceberg."""
    from pyiceberg.catalog import load_catalog

    from stores import catalog_kind, resolve_stores
    from stores.remote import fileio_properties

    uri = src.catalog or resolve_stores().catalog_uri
    kind = catalog_kind(uri)
    if kind == "named":
        return load_catalog(uri)
    props = {"type": kind, "uri": uri, **fileio_properties()}
    # a SQL catalog keys its tables by the catalog's name: aepipe's catalogs are "aepipe";
    # another name is configured for pyiceberg and named in source.catalog instead
    return load_catalog("aepipe", **props)


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
        from tasks.config import ConfigError

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
        from tasks.config import ConfigError

        if self.table(src).current_snapshot() is None:
            raise ConfigError(f"Iceberg table {src.path!r} has no rows (no snapshot yet)")

    def columns(self, src: SourceConfig, listing: list[str] | None = None) -> list[str]:
        """The table's column names; nested columns refused unless excluded."""
        from tasks.config import ConfigError

        schema = self.table(src).schema().as_arrow()
        nested = [f.name for f in schema if pa.types.is_nested(f.type)]
        refused = [c for c in nested if c not in src.exclude]
        if refused:
            raise ConfigError(
                f"column(s) {refused} of Iceberg table {src.path!r} are nested (structs, lists, "
                "maps); add them to source.exclude"
            )
        return list(schema.names)

    def items(
        self,
        src: SourceConfig,
        part: IngestPart | None,
        needed: list[str],
        sample: bool = False,
    ) -> Iterator[pa.RecordBatch]:
        """The ``needed`` columns of the current snapshot, batch by batch (the first 65,536
        rows when ``sample``)."""
        scan = self.table(src).scan(selected_fields=tuple(needed), limit=65536 if sample else None)
        yield from scan.to_arrow_batch_reader()

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


READER = IcebergReader()
