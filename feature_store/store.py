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
    return SqlCatalog("aepipe", uri=stores.catalog_uri, warehouse=stores.warehouse)


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
    if code_size_of(tbl.schema().as_arrow()) < code_size:
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


WRITE_BIN_BYTES = 64 << 20  # Arrow bytes per data file: bounds a write's memory
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


def _bins(tables: Iterable[pa.Table], max_bytes: int) -> Iterator[pa.Table]:
    """Group consecutive tables into chunks of about ``max_bytes`` (one data file each)."""
    held: list[pa.Table] = []
    size = 0
    for t in tables:
        held.append(t)
        size += t.nbytes
        if size >= max_bytes:
            yield pa.concat_tables(held)
            held, size = [], 0
    if held:
        yield pa.concat_tables(held)


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

    ``batches`` is consumed as a stream: every batch is validated against the declared schema,
    and batches are written to Parquet data files of about 64 MB as they come, so memory holds
    one file's worth, not the input. Nothing is visible until the single commit at the end.
    ``mode="replace"`` swaps the version's slice for the new rows (re-running a version never
    duplicates it); ``mode="append"`` adds rows to it (incremental scoring). A commit that loses
    a race with another writer is retried on the refreshed table, so concurrent writers all
    land. ``properties`` are stored in the snapshot summary (prefixed ``aepipe.``). An append
    of nothing commits nothing and returns 0.
    """
    from pyiceberg.expressions import And, EqualTo
    from pyiceberg.io.pyarrow import _dataframe_to_data_files

    if mode not in ("replace", "append"):
        raise ValueError(f"mode must be 'replace' or 'append', got {mode!r}")
    st = stores or resolve_stores()
    stream = iter([batches] if isinstance(batches, pa.Table) else batches)
    first = next(stream, None)
    if first is not None:  # a bad first batch is refused before any table is created
        _check_slice(first, code_size, model_name, model_version)
        stream = itertools.chain([first], stream)
    catalog = get_catalog(st, create=True)
    tbl = _ensure_table(catalog, table, code_size, model_name)
    target = tbl.schema().as_arrow()
    write_uuid, counter = uuid.uuid4(), itertools.count()
    written: list[Any] = []
    rows = 0
    try:
        for chunk in _bins(
            _validated(stream, code_size, model_name, model_version, target), WRITE_BIN_BYTES
        ):
            written.extend(
                _dataframe_to_data_files(tbl.metadata, chunk, tbl.io, write_uuid, counter)
            )
            rows += chunk.num_rows
    except BaseException:
        _remove_files(tbl, written)
        raise
    if mode == "append" and rows == 0:
        return 0
    slice_filter = And(EqualTo("model_name", model_name), EqualTo("model_version", model_version))
    summary = {
        "aepipe.model_name": model_name,
        "aepipe.model_version": str(model_version),
        "aepipe.mode": mode,
        "aepipe.rows": str(rows),
        **{f"aepipe.{k}": str(v) for k, v in (properties or {}).items()},
    }
    _commit(tbl, written, slice_filter if mode == "replace" else None, summary)
    return rows


def _commit(tbl: Table, new_files: list[Any], replace: Any, summary: dict[str, str]) -> None:
    """One snapshot: add ``new_files`` and, when ``replace`` is a filter, drop the files of that
    slice (identity partitions, so whole files); pyiceberg retries lost races on the refreshed
    table, and the new files are removed again when the commit is known not to have landed."""
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
        _remove_files(tbl, new_files)
        raise FeatureStoreError(
            f"could not commit to feature table {tbl.name()[-1]!r}: {err}; nothing was written"
        ) from err


def _remove_files(tbl: Table, data_files: list[Any]) -> None:
    for f in data_files:
        with contextlib.suppress(OSError):
            tbl.io.delete(f.file_path)


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
        if isinstance(model_version, str) and not model_version.isdigit():
            model_name = tbl.properties.get(MODEL_NAME_PROPERTY)
            if not model_name:
                raise FeatureStoreError(f"table {table!r} does not record its registered model")
            number = resolve_version(model_name, model_version, st.tracking_uri)
        else:
            number = int(model_version)
        row_filter = EqualTo("model_version", number)
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
