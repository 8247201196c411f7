"""Iceberg-backed feature tables: atomic, idempotent writes per model version, and reads.

Tables live in a pyiceberg SQL catalog (SQLite by default, Postgres in production) with Parquet
data files in a warehouse folder (local by default, S3/GCS in production), under the namespace
``aepipe``. Each table is partitioned by model name and version, so one version is read or
replaced alone.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

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
            ident, schema=schema, properties={MODEL_NAME_PROPERTY: model_name}
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


def write_features(
    table: str,
    batches: Iterable[pa.RecordBatch] | pa.Table,
    *,
    code_size: int,
    model_name: str,
    model_version: int,
    stores: Stores | None = None,
) -> int:
    """Replace the rows of (model_name, model_version) with ``batches`` in one atomic commit.

    Every batch is validated against the declared schema first; a re-run of the same version
    replaces its slice instead of duplicating it. Returns the number of rows written.
    """
    from pyiceberg.expressions import And, EqualTo

    st = stores or resolve_stores()
    chunks = [batches] if isinstance(batches, pa.Table) else list(batches)
    for chunk in chunks:
        validate_batch(chunk, code_size)
        for col, expected in (("model_name", model_name), ("model_version", model_version)):
            values = chunk.column(col).unique().to_pylist()
            if values and values != [expected]:
                raise ValueError(f"batch column {col!r} holds {values}, expected only {expected!r}")
    catalog = get_catalog(st, create=True)
    tbl = _ensure_table(catalog, table, code_size, model_name)
    target = tbl.schema().as_arrow()
    data = (
        pa.concat_tables(
            [
                _conform(pa.Table.from_batches([c]) if isinstance(c, pa.RecordBatch) else c, target)
                for c in chunks
            ]
        )
        if chunks
        else target.empty_table()
    )
    slice_filter = And(EqualTo("model_name", model_name), EqualTo("model_version", model_version))
    with warnings.catch_warnings():
        # a first write of a version has nothing to replace; pyiceberg warns about that
        warnings.filterwarnings("ignore", "Delete operation did not match any records")
        tbl.overwrite(
            data,
            overwrite_filter=slice_filter,
            snapshot_properties={
                "aepipe.model_name": model_name,
                "aepipe.model_version": str(model_version),
            },
        )
    return data.num_rows


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


def read_features_arrow(
    table: str,
    model_version: str | int | None = "champion",
    *,
    columns: list[str] | None = None,
    home: str | os.PathLike[str] | Stores | None = None,
) -> pa.Table:
    """Arrow table of a feature table's rows for one model version.

    ``model_version`` is an MLflow alias such as ``"champion"``, a version number, or ``None``
    for every version. Latent columns that the chosen version does not have are dropped.
    """
    from pyiceberg.expressions import AlwaysTrue, EqualTo

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
    selected = tuple(columns) if columns else ("*",)
    result = tbl.scan(row_filter=row_filter, selected_fields=selected).to_arrow()
    if model_version is not None and result.num_rows == 0:
        raise FeatureStoreError(f"table {table!r} has no rows for model version {model_version!r}")
    if model_version is not None and not columns:
        empty = [
            n
            for n in result.schema.names
            if n.startswith("z_") and result.column(n).null_count == result.num_rows
        ]
        result = result.drop_columns(empty)
    return result


def read_features(
    table: str,
    model_version: str | int | None = "champion",
    *,
    columns: list[str] | None = None,
    home: str | os.PathLike[str] | Stores | None = None,
) -> pd.DataFrame:
    """pandas DataFrame of :func:`read_features_arrow`; the usual entry point for readers."""
    return read_features_arrow(table, model_version, columns=columns, home=home).to_pandas()
