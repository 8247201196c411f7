"""Point-in-time joins: the features each entity had at a given moment, as Feast does it.

A downstream training set is an *entity DataFrame* (entity key, event timestamp, usually a
label). Joining it to a feature table must never leak the future: each row gets the latest
features of its entity scored at or before its own timestamp, or nothing.
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from ae_models.vocabulary import (
    ENTITY_KEY,
    EVENT_TIMESTAMP,
    IS_ANOMALY,
    LATENT_PREFIX,
    RECON_ERROR,
    SCORED_AT,
)
from feature_store.catalog import FeatureStoreError
from feature_store.read import AsOf, Resolver, read_features_arrow

if TYPE_CHECKING:
    from stores import Stores

ID_FILTER_LIMIT = 5_000  # above this many entities one scan beats an IN filter


def _utc(values: pd.Series, what: str) -> pd.Series:
    try:
        out = pd.to_datetime(values, utc=True)
    except (ValueError, TypeError) as err:
        raise FeatureStoreError(f"{what} cannot be read as timestamps: {err}") from None
    if out.isna().any():
        first = int(np.flatnonzero(out.isna().to_numpy())[0])
        raise FeatureStoreError(f"{what} has a missing timestamp (first at row {first})")
    return out.dt.as_unit("us")


def _entities(entity_df: pd.DataFrame, entity_key: str, timestamp_column: str) -> pd.DataFrame:
    """The left side of the join: each row's position, its key as text and its time (UTC);
    a missing column or a missing key is an error naming it."""
    for col in (entity_key, timestamp_column):
        if col not in entity_df.columns:
            raise FeatureStoreError(
                f"entity_df has no column {col!r}; columns: {list(entity_df.columns)}"
            )
    keys = entity_df[entity_key].astype("string")
    if keys.isna().any():
        raise FeatureStoreError(f"entity_df column {entity_key!r} has missing values")
    return pd.DataFrame(
        {
            "__row": np.arange(len(entity_df)),
            ENTITY_KEY: keys.to_numpy(dtype=object),
            "__at": _utc(entity_df[timestamp_column], f"entity_df column {timestamp_column!r}"),
        }
    )


def get_historical_features(
    entity_df: pd.DataFrame,
    table: str,
    model_version: str | int | None = "champion",
    *,
    features: list[str] | None = None,
    entity_key: str = ENTITY_KEY,
    timestamp_column: str = EVENT_TIMESTAMP,
    ttl: timedelta | None = None,
    as_of: AsOf | None = None,
    home: str | os.PathLike[str] | Stores | None = None,
    resolve: Resolver | None = None,
) -> pd.DataFrame:
    """``entity_df`` with, on each row, the latest features of its entity whose
    ``event_timestamp`` is at or before the row's ``timestamp_column`` (no future leakage):
    the entity's version as it was then; of two rows with one event time, the later scored.

    ``features`` are the feature-table columns to attach (default: every ``z_*`` column plus
    ``recon_error`` and ``is_anomaly``); the matched row's ``event_timestamp`` comes along as
    ``feature_timestamp``. Rows with no earlier features, or only ones older than ``ttl``, get
    missing values. Row order and all columns of ``entity_df`` are kept; entity keys are compared
    as text, the way the feature table stores them. Naive timestamps are read as UTC.
    """
    left = _entities(entity_df, entity_key, timestamp_column)
    from pyiceberg.expressions import In

    ids = pd.unique(left[ENTITY_KEY])
    id_filter = In(ENTITY_KEY, set(ids.tolist())) if 0 < len(ids) <= ID_FILTER_LIMIT else None
    wanted = None if features is None else [ENTITY_KEY, EVENT_TIMESTAMP, SCORED_AT, *features]
    right = read_features_arrow(
        table,
        model_version,
        as_of=as_of,
        columns=wanted,
        filter=id_filter,
        home=home,
        resolve=resolve,
    ).to_pandas()
    if features is None:
        features = [c for c in right.columns if c.startswith(LATENT_PREFIX)] + [
            RECON_ERROR,
            IS_ANOMALY,
        ]
    clash = [c for c in [*features, "feature_timestamp"] if c in entity_df.columns]
    if clash:
        raise FeatureStoreError(f"entity_df already has column(s) {clash}; rename them first")
    right = right[[ENTITY_KEY, EVENT_TIMESTAMP, SCORED_AT, *features]].rename(
        columns={EVENT_TIMESTAMP: "feature_timestamp", SCORED_AT: "__scored"}
    )
    right[ENTITY_KEY] = right[ENTITY_KEY].astype(left[ENTITY_KEY].dtype)
    right["feature_timestamp"] = _utc(right["feature_timestamp"], "feature table event_timestamp")
    right["__ft"] = right["feature_timestamp"]
    joined = pd.merge_asof(
        left.sort_values("__at", kind="stable"),
        # of rows with one event time, merge_asof takes the last: the latest scored
        right.sort_values(["__ft", "__scored"], kind="stable"),
        left_on="__at",
        right_on="__ft",
        by=ENTITY_KEY,
        direction="backward",
        allow_exact_matches=True,
        tolerance=pd.Timedelta(ttl) if ttl is not None else None,
    ).sort_values("__row")
    out = entity_df.reset_index(drop=True).copy()
    for col in [*features, "feature_timestamp"]:
        out[col] = joined[col].to_numpy()
    out.index = entity_df.index
    return out
