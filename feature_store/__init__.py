"""Versioned feature tables on Apache Iceberg: schema, writes, and reads for downstream models."""

from feature_store.historical import get_historical_features
from feature_store.schema import ENTITY_KEY, EVENT_TIMESTAMP, feature_schema, latent_columns
from feature_store.store import (
    FeatureStoreError,
    StagedFeatures,
    commit_features,
    data_files,
    discard_features,
    list_tables,
    load_table,
    prepare_table,
    read_features,
    read_features_arrow,
    stage_features,
    table_history,
    table_identifier,
    write_features,
)

__all__ = [
    "ENTITY_KEY",
    "EVENT_TIMESTAMP",
    "FeatureStoreError",
    "StagedFeatures",
    "commit_features",
    "data_files",
    "discard_features",
    "feature_schema",
    "get_historical_features",
    "latent_columns",
    "list_tables",
    "load_table",
    "prepare_table",
    "read_features",
    "read_features_arrow",
    "stage_features",
    "table_history",
    "table_identifier",
    "write_features",
]
