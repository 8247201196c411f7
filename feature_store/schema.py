"""The feature table's schema, declared once: writers validate against it.

The column names are aepipe's vocabulary (:mod:`ae_models.vocabulary`). The feature table
holds the key, the event time, the model's outputs
(latent code ``z_*``, ``recon_error``, ``anomaly_score``, ``is_anomaly``, ``top_columns``) and
the model version that wrote each row.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import numpy as np
import pyarrow as pa

from ae_models.vocabulary import (
    ANOMALY_SCORE,
    ENTITY_KEY,
    EVENT_TIMESTAMP,
    IS_ANOMALY,
    LATENT_PREFIX,
    MODEL_NAME,
    MODEL_VERSION,
    RECON_ERROR,
    RUN_ID,
    SCORED_AT,
    TOP_COLUMNS,
    latent_columns,
)

TIMESTAMP = pa.timestamp("us", tz="UTC")
_LATENT = re.compile(rf"^{re.escape(LATENT_PREFIX)}(\d+)$")

BASE_FIELDS: tuple[pa.Field, ...] = (
    pa.field(ENTITY_KEY, pa.string(), nullable=False),
    pa.field(EVENT_TIMESTAMP, TIMESTAMP, nullable=False),
)
TAIL_FIELDS: tuple[pa.Field, ...] = (
    pa.field(RECON_ERROR, pa.float32(), nullable=False),
    # the score mapped to [0, 1] by the training scores (null for models saved before it)
    pa.field(ANOMALY_SCORE, pa.float32(), nullable=True),
    pa.field(IS_ANOMALY, pa.bool_(), nullable=False),
    # the source columns contributing most to the score, largest first (null when not asked)
    pa.field(TOP_COLUMNS, pa.list_(pa.string()), nullable=True),
    pa.field(MODEL_NAME, pa.string(), nullable=False),
    pa.field(MODEL_VERSION, pa.int64(), nullable=False),
    pa.field(RUN_ID, pa.string(), nullable=False),
    pa.field(SCORED_AT, TIMESTAMP, nullable=False),
)
PARTITION_COLUMNS = (MODEL_NAME, MODEL_VERSION)


def feature_schema(code_size: int) -> pa.Schema:
    """Arrow schema of a feature table for a ``code_size``-wide code."""
    if code_size < 1:
        raise ValueError(f"code_size must be >= 1, got {code_size}")
    latent = [pa.field(name, pa.float32(), nullable=False) for name in latent_columns(code_size)]
    return pa.schema([*BASE_FIELDS, *latent, *TAIL_FIELDS])


def row_bytes(code_size: int) -> int:
    """An upper bound of a feature row's size in a data file: 4 bytes a code value, and the
    id, times, scores, model columns and explanations (compression only makes it smaller)."""
    return 4 * code_size + 192


def code_size_of(schema: pa.Schema) -> int:
    """Number of ``z_*`` columns in ``schema``."""
    return sum(1 for name in schema.names if _LATENT.match(name))


def validate_batch(batch: pa.RecordBatch | pa.Table, code_size: int) -> None:
    """Raise ValueError naming the first column that is missing, mistyped or holds nulls/NaN."""
    expected = feature_schema(code_size)
    for f in expected:
        if f.name not in batch.schema.names:
            if f.nullable:  # optional columns may be left out: they read as null
                continue
            raise ValueError(f"feature batch lacks column {f.name!r} (expected {f.type})")
        got = batch.schema.field(f.name).type
        if got != f.type and not (pa.types.is_null(got) and f.nullable):
            raise ValueError(f"feature column {f.name!r} has type {got}, expected {f.type}")
        col = batch.column(f.name)
        if col.null_count and not f.nullable:
            raise ValueError(f"feature column {f.name!r} has {col.null_count} null values")
        if pa.types.is_floating(f.type):
            import pyarrow.compute as pc

            finite = pc.all(pc.is_finite(col)).as_py()
            if finite is False:
                raise ValueError(f"feature column {f.name!r} holds NaN or infinite values")
    extra = [n for n in batch.schema.names if n not in expected.names]
    if extra:
        raise ValueError(f"feature batch has unexpected columns: {extra}")


def feature_batch(
    schema: pa.Schema,
    ids: pa.Array,
    timestamps: pa.Array,
    outputs: Mapping[str, np.ndarray],
    *,
    model_name: str,
    model_version: int,
    run_id: str,
    scored_at: datetime,
    top: pa.Array | None = None,
) -> pa.RecordBatch:
    """One feature-table batch of ``schema``: the entity ids and event times, the model's
    named ``outputs`` (``z_*``, ``recon_error``, ``anomaly_score``, ``is_anomaly``: what
    ``ae_models.outputs.RowOutputs.columns`` gives; an optional one left out reads as null),
    the top contributing columns when given, and the version that wrote the rows."""
    n = len(ids)
    given: dict[str, Any] = {
        ENTITY_KEY: ids.cast(pa.string()),
        EVENT_TIMESTAMP: timestamps.cast(TIMESTAMP),
        TOP_COLUMNS: top,
        MODEL_NAME: pa.array([model_name] * n, pa.string()),
        MODEL_VERSION: pa.array(np.full(n, model_version, np.int64)),
        RUN_ID: pa.array([run_id] * n, pa.string()),
        SCORED_AT: pa.array(np.full(n, pa.scalar(scored_at, TIMESTAMP).value, np.int64)).cast(
            TIMESTAMP
        ),
    }
    arrays = []
    for f in schema:
        if f.name in given:
            value = given[f.name]
        else:
            value = outputs.get(f.name)
            if value is not None:
                value = pa.array(value, f.type)
        if value is None and not f.nullable:
            raise ValueError(f"feature batch lacks column {f.name!r} (expected {f.type})")
        arrays.append(value if value is not None else pa.nulls(n, f.type))
    return pa.RecordBatch.from_arrays(arrays, schema=schema)
