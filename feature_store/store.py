"""Iceberg-backed feature tables: atomic, idempotent writes per model version, and reads.

Tables live in a pyiceberg SQL catalog (SQLite by default, Postgres in production) with Parquet
data files in a warehouse folder (local by default, S3/GCS in production), under the namespace
``aepipe``. Each table is partitioned by model name and version, so one version is read or
replaced alone.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import pyarrow as pa

from aepipe.settings import NAMESPACE, Stores
from aepipe.settings import stores as resolve_stores
from feature_store.schema import (
    PARTITION_COLUMNS,
    code_size_of,
    feature_schema,
    validate_batch,
)

if TYPE_CHECKING:
    import pandas as pd
    from pyiceberg.catalog import Catalog
    from pyiceberg.expressions import BooleanExpression
    from pyiceberg.table import Table

MODEL_NAME_PROPERTY = "aepipe.model_name"


class FeatureStoreError(LookupError):
    """A feature table, version or store that does not exist; the message says which."""


def table_identifier(table: str) -> str:
    """Fully qualified ``namespace.table`` name for a bare feature table name."""
    return table if "." in table else f"{NAMESPACE}.{table}"


def get_catalog(stores: Stores, create: bool = False) -> Catalog:
    """The pyiceberg SQL catalog of ``stores``; with ``create=False`` a missing local one is an
    error rather than silently created."""
    from pyiceberg.catalog.sql import SqlCatalog

    if stores.catalog_uri.startswith("sqlite:///"):
        db = Path(stores.catalog_uri.removeprefix("sqlite:///"))
        if not db.exists():
            if not create:
                raise FeatureStoreError(
                    f"no feature store at {stores.home} (catalog {db} does not exist); "
                    "run `aepipe run` first or set AEPIPE_HOME"
                )
            db.parent.mkdir(parents=True, exist_ok=True)
    if stores.warehouse.startswith("file://") and create:
        Path(stores.warehouse.removeprefix("file://")).mkdir(parents=True, exist_ok=True)
    return _racing(lambda: SqlCatalog("aepipe", uri=stores.catalog_uri, warehouse=stores.warehouse))


def _racing(step: Any, attempts: int = 6) -> Any:
    """Run an idempotent set-up step (create the catalog's tables, a namespace, a table and
    its partitioning), again when another process or run doing the same lost or won a race
    with this one (a table that "already exists", a unique key taken, a commit that lost):
    two first runs on a fresh home both get there."""
    import random
    import time

    from pyiceberg.exceptions import CommitFailedException
    from sqlalchemy.exc import IntegrityError, OperationalError

    for attempt in range(attempts):
        try:
            return step()
        except (OperationalError, IntegrityError, CommitFailedException):
            if attempt == attempts - 1:
                raise
            time.sleep(0.05 * 2**attempt * (1 + random.random()))
    raise AssertionError("unreachable")


def _stores(home: str | os.PathLike[str] | Stores | None) -> Stores:
    return home if isinstance(home, Stores) else resolve_stores(home)


def load_table(table: str, home: str | os.PathLike[str] | Stores | None = None) -> Table:
    """The Iceberg table behind a feature table name (raises FeatureStoreError if absent)."""
    from pyiceberg.exceptions import NoSuchTableError

    catalog = get_catalog(_stores(home))
    try:
        return catalog.load_table(table_identifier(table))
    except NoSuchTableError:
        names = list_tables(home)
        raise FeatureStoreError(f"no feature table {table!r}; tables: {names}") from None


def list_tables(home: str | os.PathLike[str] | Stores | None = None) -> list[str]:
    """Names of the feature tables in the store."""
    from pyiceberg.exceptions import NoSuchNamespaceError

    catalog = get_catalog(_stores(home))
    try:
        return sorted(ident[-1] for ident in catalog.list_tables(NAMESPACE))
    except NoSuchNamespaceError:
        return []


def _ensure_table(catalog: Catalog, table: str, code_size: int, model_name: str) -> Table:
    from pyiceberg.exceptions import NoSuchTableError

    catalog.create_namespace_if_not_exists(NAMESPACE)
    ident = table_identifier(table)
    try:
        tbl = catalog.load_table(ident)
    except NoSuchTableError:
        schema = _table_schema(code_size)
        tbl = catalog.create_table_if_not_exists(
            ident,
            schema=schema,
            properties={MODEL_NAME_PROPERTY: model_name, COMMIT_RETRIES_PROPERTY: COMMIT_RETRIES},
        )
        if tbl.spec().is_unpartitioned():
            with tbl.update_spec() as spec:
                for col in PARTITION_COLUMNS:
                    spec.add_identity(col)
        return tbl
    current = tbl.schema().as_arrow()
    wanted = _table_schema(code_size)
    if code_size_of(current) < code_size or set(wanted.names) - set(current.names):
        # a longer code, or columns added in a later aepipe: widen (old rows read as null)
        with tbl.update_schema() as update:
            update.union_by_name(_table_schema(code_size))
    return tbl


def _table_schema(code_size: int) -> pa.Schema:
    """Table schema: latent columns optional so versions with other code sizes can share it."""
    base = feature_schema(code_size)
    return pa.schema([f.with_nullable(True) if f.name.startswith("z_") else f for f in base])


def _conform(batch: pa.Table, target: pa.Schema) -> pa.Table:
    """Reorder ``batch`` to the table's schema, filling latent columns it lacks with nulls."""
    cols = []
    for f in target:
        if f.name in batch.schema.names:
            cols.append(batch.column(f.name).cast(f.type))
        else:
            cols.append(pa.nulls(batch.num_rows, f.type))
    return pa.Table.from_arrays(cols, schema=target)


ROW_GROUP_BYTES = 8 << 20  # Arrow bytes held before they are written: a write's memory
FILE_BYTES = 256 << 20  # Arrow bytes per data file (compressed on disk: a few times less)
COMMIT_RETRIES_PROPERTY = "commit.retry.num-retries"
COMMIT_RETRIES = "10"  # pyiceberg retries a commit that lost a race with another writer


def _check_slice(
    chunk: pa.RecordBatch | pa.Table, code_size: int, model_name: str, model_version: int
) -> None:
    """Raise ValueError unless ``chunk`` fits the schema and holds only this model version."""
    validate_batch(chunk, code_size)
    for col, expected in (("model_name", model_name), ("model_version", model_version)):
        values = chunk.column(col).unique().to_pylist()
        if values and values != [expected]:
            raise ValueError(f"batch column {col!r} holds {values}, expected only {expected!r}")


def _validated(
    stream: Iterable[pa.RecordBatch | pa.Table],
    code_size: int,
    model_name: str,
    model_version: int,
    target: pa.Schema,
) -> Iterator[pa.Table]:
    """Check each batch against the declared schema and its slice, then conform it."""
    for chunk in stream:
        _check_slice(chunk, code_size, model_name, model_version)
        table = pa.Table.from_batches([chunk]) if isinstance(chunk, pa.RecordBatch) else chunk
        if table.num_rows:
            yield _conform(table, target)


class _DataFiles:
    """Rolling Parquet data files for one partition (one model version) of an Iceberg table.

    Rows are buffered up to a row group (``ROW_GROUP_BYTES``) and appended to the open file,
    which is closed at ``FILE_BYTES``; so a write holds one row group in memory however large
    its input, and the files come out large enough for readers. The files carry Iceberg field
    ids, as pyiceberg's own writer writes them; the commit reads their statistics back.
    """

    def __init__(self, tbl: Table) -> None:
        from pyiceberg.io.fileformat import FileFormatFactory
        from pyiceberg.manifest import FileFormat
        from pyiceberg.table.locations import load_location_provider

        self.tbl = tbl
        meta = tbl.metadata
        self.schema = meta.schema()
        self.model = FileFormatFactory.get(FileFormat.PARQUET)
        self.locations = load_location_provider(meta.location, meta.properties)
        self.write_uuid, self.counter = uuid.uuid4(), itertools.count()
        self.paths: list[str] = []
        self.partition_key: Any = None
        self._held: list[pa.Table] = []
        self._held_bytes = 0
        self._writer: Any = None
        self._file_bytes = 0

    def write(self, table: pa.Table) -> None:
        """Add rows (already conformed to the table schema and of one partition)."""
        if self.partition_key is None:
            from pyiceberg.io.pyarrow import _determine_partitions

            meta = self.tbl.metadata
            first = next(iter(_determine_partitions(meta.spec(), self.schema, table.slice(0, 1))))
            self.partition_key = first.partition_key
        self._held.append(table)
        self._held_bytes += table.nbytes
        if self._held_bytes >= ROW_GROUP_BYTES:
            self._flush()

    def _flush(self) -> None:
        from pyiceberg.io.pyarrow import _to_requested_schema, pyarrow_to_schema

        if not self._held:
            return
        table = pa.concat_tables(self._held)
        self._held, self._held_bytes = [], 0
        source_schema = pyarrow_to_schema(table.schema, name_mapping=self.schema.name_mapping)
        batches = [
            _to_requested_schema(
                self.schema, source_schema, b, include_field_ids=True, format_model=self.model
            )
            for b in table.to_batches()
        ]
        if self._writer is None:
            name = f"00000-{next(self.counter)}-{self.write_uuid}.parquet"
            path = self.locations.new_data_location(name, self.partition_key)
            self.paths.append(path)
            self._writer = self.model.create_writer(
                self.tbl.io.new_output(path), self.schema, self.tbl.metadata.properties
            )
        self._writer.write(pa.Table.from_batches(batches))
        self._file_bytes += table.nbytes
        if self._file_bytes >= FILE_BYTES:
            self._close_file()

    def _close_file(self) -> None:
        self._writer.close()
        self._writer, self._file_bytes = None, 0

    def close(self) -> list[str]:
        """Finish the open file; the paths of the data files written."""
        self._flush()
        if self._writer is not None:
            self._close_file()
        return self.paths

    def remove(self) -> None:
        """Delete every file this writer created (the write failed or did not commit)."""
        if self._writer is not None:
            with contextlib.suppress(Exception):
                self._writer.close()
            self._writer = None
        for path in self.paths:
            with contextlib.suppress(OSError):
                self.tbl.io.delete(path)


@dataclass(frozen=True)
class StagedFeatures:
    """Data files written for a table but not committed (invisible to readers): what one
    partition of a distributed write hands to the commit."""

    table: str
    paths: list[str]
    rows: int


def prepare_table(
    table: str, *, code_size: int, model_name: str, stores: Stores | None = None
) -> None:
    """Create the feature table (or widen it for a longer code) before parallel writers stage
    files into it, so they do not race to create it."""
    catalog = get_catalog(stores or resolve_stores(), create=True)
    _racing(lambda: _ensure_table(catalog, table, code_size, model_name))


def stage_features(
    table: str,
    batches: Iterable[pa.RecordBatch | pa.Table] | pa.Table,
    *,
    code_size: int,
    model_name: str,
    model_version: int,
    stores: Stores | None = None,
) -> StagedFeatures:
    """Validate and write feature rows as data files of ``table`` without committing them.

    ``batches`` is consumed as a stream into rolling Parquet files (memory holds one row
    group). :func:`commit_features` makes staged files visible in one commit, from any process;
    :func:`discard_features` deletes them. A bad first batch is refused before any table is
    created; a failure mid-stream deletes what was written.
    """
    st = stores or resolve_stores()
    stream = iter([batches] if isinstance(batches, pa.Table) else batches)
    first = next(stream, None)
    if first is not None:
        _check_slice(first, code_size, model_name, model_version)
        stream = itertools.chain([first], stream)
    catalog = get_catalog(st, create=True)
    tbl = _racing(lambda: _ensure_table(catalog, table, code_size, model_name))
    target = tbl.schema().as_arrow()
    files = _DataFiles(tbl)
    rows = 0
    try:
        for chunk in _validated(stream, code_size, model_name, model_version, target):
            files.write(chunk)
            rows += chunk.num_rows
        files.close()
    except BaseException:
        files.remove()
        raise
    return StagedFeatures(table, list(files.paths), rows)


def commit_features(
    staged: Iterable[StagedFeatures],
    *,
    model_name: str,
    model_version: int,
    stores: Stores | None = None,
    mode: Literal["replace", "append"] = "replace",
    properties: dict[str, str] | None = None,
) -> int:
    """Make staged files visible in one atomic commit; returns the rows they hold.

    ``mode="replace"`` swaps the version's slice for them (re-running a version never
    duplicates it); ``mode="append"`` adds them (incremental scoring). A commit that loses a
    race with another writer is retried on the refreshed table, so concurrent writers all
    land; when it cannot land the staged files are deleted. ``properties`` go to the snapshot
    summary (prefixed ``aepipe.``). An append of nothing commits nothing.
    """
    from pyiceberg.expressions import And, EqualTo
    from pyiceberg.io.pyarrow import parquet_file_to_data_file

    if mode not in ("replace", "append"):
        raise ValueError(f"mode must be 'replace' or 'append', got {mode!r}")
    parts = list(staged)
    tables = {s.table for s in parts}
    if len(tables) != 1:
        raise ValueError(f"staged files must belong to one table, got {sorted(tables)}")
    st = stores or resolve_stores()
    tbl = load_table(tables.pop(), st)
    rows = sum(s.rows for s in parts)
    if mode == "append" and rows == 0:
        discard_features(parts, st)
        return 0
    try:
        data_files = [
            parquet_file_to_data_file(tbl.io, tbl.metadata, path) for s in parts for path in s.paths
        ]
        expected = (model_name, model_version)
        for f in data_files:
            if tuple(f.partition) != expected:
                raise ValueError(f"staged file {f.file_path} holds {tuple(f.partition)}")
        slice_filter = And(
            EqualTo("model_name", model_name), EqualTo("model_version", model_version)
        )
        summary = {
            "aepipe.model_name": model_name,
            "aepipe.model_version": str(model_version),
            "aepipe.mode": mode,
            "aepipe.rows": str(rows),
            **{f"aepipe.{k}": str(v) for k, v in (properties or {}).items()},
        }
        _commit(tbl, data_files, slice_filter if mode == "replace" else None, summary)
    except (FeatureStoreError, ValueError):
        discard_features(parts, st)  # the commit did not land
        raise
    return rows


def discard_features(staged: Iterable[StagedFeatures], stores: Stores | None = None) -> None:
    """Delete staged files that will not be committed."""
    parts = list(staged)
    if not parts:
        return
    tbl = load_table(parts[0].table, stores or resolve_stores())
    for s in parts:
        for path in s.paths:
            with contextlib.suppress(OSError):
                tbl.io.delete(path)


def write_features(
    table: str,
    batches: Iterable[pa.RecordBatch | pa.Table] | pa.Table,
    *,
    code_size: int,
    model_name: str,
    model_version: int,
    stores: Stores | None = None,
    mode: Literal["replace", "append"] = "replace",
    properties: dict[str, str] | None = None,
) -> int:
    """Write feature rows of one model version in one atomic Iceberg commit; returns the rows.

    :func:`stage_features` then :func:`commit_features`: streamed, validated, invisible until
    the one commit; ``mode`` and ``properties`` as there.
    """
    if mode not in ("replace", "append"):
        raise ValueError(f"mode must be 'replace' or 'append', got {mode!r}")
    st = stores or resolve_stores()
    staged = stage_features(
        table,
        batches,
        code_size=code_size,
        model_name=model_name,
        model_version=model_version,
        stores=st,
    )
    return commit_features(
        [staged],
        model_name=model_name,
        model_version=model_version,
        stores=st,
        mode=mode,
        properties=properties,
    )


def _commit(tbl: Table, new_files: list[Any], replace: Any, summary: dict[str, str]) -> None:
    """One snapshot: add ``new_files`` and, when ``replace`` is a filter, drop the files of that
    slice (identity partitions, so whole files); pyiceberg retries lost races on the refreshed
    table. Raises FeatureStoreError when the commit is known not to have landed."""
    from pyiceberg.exceptions import CommitFailedException, ValidationException

    try:
        with tbl.transaction() as tx:
            old = [t.file for t in tbl.scan(row_filter=replace).plan_files()] if replace else []
            producer = tx.update_snapshot(snapshot_properties=summary)
            if old:
                with producer.overwrite() as ow:
                    ow.delete_by_predicate(replace)
                    for f in old:
                        ow.delete_data_file(f)
                    for f in new_files:
                        ow.append_data_file(f)
            else:
                with producer.fast_append() as app:
                    for f in new_files:
                        app.append_data_file(f)
    except (CommitFailedException, ValidationException) as err:
        raise FeatureStoreError(
            f"could not commit to feature table {tbl.name()[-1]!r}: {err}; nothing was written"
        ) from err


def resolve_version(model_name: str, alias: str, tracking_uri: str) -> int:
    """Version number that an MLflow registry alias (e.g. ``champion``) points to."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        mv = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        return int(mv.get_model_version_by_alias(model_name, alias).version)
    except MlflowException as err:
        raise FeatureStoreError(
            f"registered model {model_name!r} has no version with alias {alias!r}"
        ) from err


AsOf = datetime | str | int


def _as_of_snapshot(tbl: Table, table: str, as_of: AsOf) -> int:
    """Snapshot id current at ``as_of``: a time (aware, or naive meaning UTC; ISO text works)
    or a snapshot id."""
    if isinstance(as_of, int) and not isinstance(as_of, bool):
        if tbl.snapshot_by_id(as_of) is None:
            raise FeatureStoreError(f"table {table!r} has no snapshot {as_of}")
        return as_of
    when = datetime.fromisoformat(as_of) if isinstance(as_of, str) else as_of
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    snap = tbl.snapshot_as_of_timestamp(int(when.timestamp() * 1000))
    if snap is None:
        history = tbl.history()
        first = (
            datetime.fromtimestamp(history[0].timestamp_ms / 1000, UTC).isoformat()
            if history
            else "none yet"
        )
        raise FeatureStoreError(
            f"table {table!r} did not exist yet at {when.isoformat()} (first commit: {first})"
        )
    return snap.snapshot_id


def table_history(table: str, home: str | os.PathLike[str] | Stores | None = None) -> pd.DataFrame:
    """One row per commit of a feature table: time, snapshot id, operation, model version and
    rows written; the times and ids are what ``as_of`` takes."""
    import pandas as pd

    tbl = load_table(table, _stores(home))
    rows = []
    for entry in tbl.history():
        snap = tbl.snapshot_by_id(entry.snapshot_id)
        summary = snap.summary if snap is not None else None
        extra = summary.additional_properties if summary is not None else {}
        rows.append(
            {
                "committed_at": datetime.fromtimestamp(entry.timestamp_ms / 1000, UTC),
                "snapshot_id": entry.snapshot_id,
                "operation": str(summary.operation.value) if summary is not None else None,
                "model_version": extra.get("aepipe.model_version"),
                "mode": extra.get("aepipe.mode"),
                "rows": extra.get("aepipe.rows"),
                "total_rows": extra.get("total-records"),
            }
        )
    return pd.DataFrame(rows)


def read_features_arrow(
    table: str,
    model_version: str | int | None = "champion",
    *,
    as_of: AsOf | None = None,
    columns: list[str] | None = None,
    filter: str | BooleanExpression | None = None,
    home: str | os.PathLike[str] | Stores | None = None,
) -> pa.Table:
    """Arrow table of a feature table's rows for one model version.

    ``model_version`` is an MLflow alias such as ``"champion"`` (resolved now, in the registry),
    a version number, or ``None`` for every version. ``as_of`` reads the table as it was at that
    time or snapshot id (Iceberg time travel). ``columns`` selects columns; ``filter`` is a
    pyiceberg row filter, as text (``"recon_error > 0.1"``) or an expression. Latent columns
    that the chosen version does not have are dropped.
    """
    from pyiceberg.expressions import AlwaysTrue, And, EqualTo

    st = _stores(home)
    tbl = load_table(table, st)
    row_filter: Any = AlwaysTrue()
    if model_version is not None:
        row_filter = EqualTo("model_version", _version_number(tbl, table, model_version, st))
    if filter is not None:
        row_filter = And(row_filter, _parse_filter(filter))
    snapshot_id = _as_of_snapshot(tbl, table, as_of) if as_of is not None else None
    known = tbl.schema().as_arrow().names
    unknown = [c for c in columns or [] if c not in known]
    if unknown:
        raise FeatureStoreError(f"table {table!r} has no column(s) {unknown}; columns: {known}")
    selected = tuple(columns) if columns else ("*",)
    result = tbl.scan(
        row_filter=row_filter, selected_fields=selected, snapshot_id=snapshot_id
    ).to_arrow()
    if model_version is not None and result.num_rows == 0 and filter is None:
        when = f" as of {as_of}" if as_of is not None else ""
        raise FeatureStoreError(
            f"table {table!r} has no rows for model version {model_version!r}{when}"
        )
    if model_version is not None and not columns:
        empty = [
            n
            for n in result.schema.names
            if n.startswith("z_") and result.column(n).null_count == result.num_rows
        ]
        result = result.drop_columns(empty)
    return result


def data_files(
    table: str,
    model_version: str | int | None = "champion",
    *,
    as_of: AsOf | None = None,
    home: str | os.PathLike[str] | Stores | None = None,
) -> list[str]:
    """Paths of the Parquet files that hold a version's rows in the current (or ``as_of``)
    snapshot: what DuckDB, polars or Spark read directly. Take the list from here rather than
    globbing the warehouse, which also keeps files of replaced versions for time travel."""
    from pyiceberg.expressions import AlwaysTrue, EqualTo

    st = _stores(home)
    tbl = load_table(table, st)
    row_filter: Any = AlwaysTrue()
    if model_version is not None:
        row_filter = EqualTo("model_version", _version_number(tbl, table, model_version, st))
    snapshot_id = _as_of_snapshot(tbl, table, as_of) if as_of is not None else None
    tasks = tbl.scan(row_filter=row_filter, snapshot_id=snapshot_id).plan_files()
    return [t.file.file_path.removeprefix("file://") for t in tasks]


def _version_number(tbl: Table, table: str, model_version: str | int, st: Stores) -> int:
    """A version number from a number or an MLflow alias of the table's registered model."""
    if isinstance(model_version, str) and not model_version.isdigit():
        model_name = tbl.properties.get(MODEL_NAME_PROPERTY)
        if not model_name:
            raise FeatureStoreError(f"table {table!r} does not record its registered model")
        return resolve_version(model_name, model_version, st.tracking_uri)
    return int(model_version)


def _parse_filter(expr: str | BooleanExpression) -> BooleanExpression:
    if not isinstance(expr, str):
        return expr
    from pyiceberg.expressions.parser import parse

    try:
        return parse(expr)
    except Exception as err:  # pyparsing raises its own error types
        raise FeatureStoreError(f"cannot parse filter {expr!r}: {err}") from None


def read_features(
    table: str,
    model_version: str | int | None = "champion",
    *,
    as_of: AsOf | None = None,
    columns: list[str] | None = None,
    filter: str | BooleanExpression | None = None,
    home: str | os.PathLike[str] | Stores | None = None,
) -> pd.DataFrame:
    """pandas DataFrame of :func:`read_features_arrow`; the usual entry point for readers."""
    return read_features_arrow(
        table, model_version, as_of=as_of, columns=columns, filter=filter, home=home
    ).to_pandas()
