"""The drift history of a data set: one row per scoring run's check, in the Iceberg table
``aepipe.<dataset>__drift`` beside its feature table. The rows are plain values; the check
itself is ``ae_models.scoring.drift``'s."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from feature_store.catalog import (
    TABLE_PROPERTIES,
    FeatureStoreError,
    as_stores,
    get_catalog,
    racing,
    table_identifier,
    with_table_properties,
)
from feature_store.schema import TIMESTAMP
from stores import Stores

if TYPE_CHECKING:
    import pandas as pd

DRIFT_SUFFIX = "__drift"
DRIFT_SCHEMA = pa.schema(
    [
        pa.field("scored_at", TIMESTAMP, nullable=False),
        pa.field("model_name", pa.string(), nullable=False),
        pa.field("model_version", pa.int64(), nullable=False),
        pa.field("run_id", pa.string()),
        pa.field("rows", pa.int64(), nullable=False),
        pa.field("checked", pa.bool_(), nullable=False),  # False: too few rows, no reference
        pa.field("drifted", pa.bool_(), nullable=False),
        pa.field("reason", pa.string()),  # why it was not checked
        pa.field("flagged_rate", pa.float64()),
        pa.field("expected_rate", pa.float64()),
        pa.field("score_p_value", pa.float64()),
        pa.field("score_ks", pa.float64()),
        pa.field("rate_p_value", pa.float64()),
        pa.field("code_p_value", pa.float64()),
        pa.field("drifted_columns", pa.list_(pa.string())),  # largest PSI first
        pa.field("psi", pa.string()),  # JSON: source column -> population stability index
    ]
)


def drift_table(dataset: str) -> str:
    """The drift table's name for a data set (its feature table's name)."""
    return f"{dataset}{DRIFT_SUFFIX}"


def record_drift(dataset: str, row: Mapping[str, Any], stores: Stores | None = None) -> None:
    """Append one check's row to the data set's drift table (created on first use)."""
    st = as_stores(stores)
    catalog = get_catalog(st, create=True)
    ident = table_identifier(drift_table(dataset))

    def ensure() -> Any:
        catalog.create_namespace_if_not_exists(ident.split(".")[0])
        return catalog.create_table_if_not_exists(
            ident, schema=DRIFT_SCHEMA, properties=TABLE_PROPERTIES
        )

    tbl = racing(lambda: with_table_properties(ensure()))
    tbl.append(pa.Table.from_pylist([dict(row)], schema=DRIFT_SCHEMA))


def read_drift(dataset: str, home: str | os.PathLike[str] | Stores | None = None) -> pd.DataFrame:
    """The data set's drift checks, oldest first: ``scored_at``, ``model_version``, ``rows``,
    ``drifted`` and the evidence (p-values, flagged rate, drifted columns, PSI as JSON)."""
    from pyiceberg.exceptions import NoSuchTableError

    catalog = get_catalog(as_stores(home))
    try:
        tbl = catalog.load_table(table_identifier(drift_table(dataset)))
    except NoSuchTableError:
        raise FeatureStoreError(
            f"no drift checks for data set {dataset!r} yet (table {drift_table(dataset)!r}); "
            "scoring runs record them"
        ) from None
    return tbl.scan().to_arrow().sort_by("scored_at").to_pandas()
