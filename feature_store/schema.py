"""The feature table schema, declared once: writers validate against it before writing."""

from __future__ import annotations

import re

import pyarrow as pa

ENTITY_KEY = "entity_id"
EVENT_TIMESTAMP = "event_timestamp"
LATENT_PREFIX = "z_"
TIMESTAMP = pa.timestamp("us", tz="UTC")
_LATENT = re.compile(r"^z_(\d+)$")

BASE_FIELDS: tuple[pa.Field, ...] = (
    pa.field(ENTITY_KEY, pa.string(), nullable=False),
    pa.field(EVENT_TIMESTAMP, TIMESTAMP, nullable=False),
)
TAIL_FIELDS: tuple[pa.Field, ...] = (
    pa.field("recon_error", pa.float32(), nullable=False),
    # the score mapped to [0, 1] by the training scores (null for models saved before it)
    pa.field("anomaly_score", pa.float32(), nullable=True),
    pa.field("is_anomaly", pa.bool_(), nullable=False),
    # the source columns contributing most to the score, largest first (null when not asked)
    pa.field("top_columns", pa.list_(pa.string()), nullable=True),
    pa.field("model_name", pa.string(), nullable=False),
    pa.field("model_version", pa.int64(), nullable=False),
    pa.field("run_id", pa.string(), nullable=False),
    pa.field("scored_at", TIMESTAMP, nullable=False),
)
PARTITION_COLUMNS = ("model_name", "model_version")


def latent_columns(code_size: int) -> list[str]:
    """Names of the latent code columns: ``z_0`` … ``z_{code_size-1}``."""
    return [f"{LATENT_PREFIX}{i}" for i in range(code_size)]


def feature_schema(code_size: int) -> pa.Schema:
    """Arrow schema of a feature table for a ``code_size``-wide code."""
    if code_size < 1:
        raise ValueError(f"code_size must be >= 1, got {code_size}")
    latent = [pa.field(name, pa.float32(), nullable=False) for name in latent_columns(code_size)]
    return pa.schema([*BASE_FIELDS, *latent, *TAIL_FIELDS])


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
