"""Versioned feature tables on Apache Iceberg: schema, writes, and reads for downstream models.

``catalog`` finds and creates tables, ``write`` stages and commits a model version's rows,
``read`` reads them back (by version number or alias, now or as of a time), ``historical``
joins them to entities point-in-time, ``maintain`` expires old snapshots and deletes the files
nothing needs. No MLflow here: aliases come from the table's own
record or from a ``resolve`` callable the caller hands in.
"""

from ae_models.vocabulary import ENTITY_KEY, EVENT_TIMESTAMP, latent_columns
from feature_store.catalog import FeatureStoreError, list_tables, load_table, table_identifier
from feature_store.drift_table import drift_table, read_drift, record_drift
from feature_store.historical import get_historical_features
from feature_store.maintain import Maintained, maintain_table
from feature_store.read import data_files, read_features, read_features_arrow, table_history
from feature_store.schema import feature_schema
from feature_store.write import (
    StagedFeatures,
    commit_features,
    discard_features,
    prepare_table,
    record_aliases,
    stage_features,
    write_features,
)

__all__ = [
    "ENTITY_KEY",
    "EVENT_TIMESTAMP",
    "FeatureStoreError",
    "Maintained",
    "StagedFeatures",
    "commit_features",
    "data_files",
    "discard_features",
    "drift_table",
    "feature_schema",
    "get_historical_features",
    "latent_columns",
    "list_tables",
    "load_table",
    "maintain_table",
    "prepare_table",
    "read_drift",
    "read_features",
    "read_features_arrow",
    "record_aliases",
    "record_drift",
    "stage_features",
    "table_history",
    "table_identifier",
    "write_features",
]
