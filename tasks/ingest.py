"""Ingest: read a source (built-in digits, CSV, Parquet) into Parquet with its column roles,
then normalize it into model-ready features with a fitted, saved normalizer."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from prefect import task

from aepipe.settings import Stores
from tasks.config import ConfigError, PipelineConfig, SourceConfig
from tasks.normalize import Normalizer, SchemaError

ENTITY_ID, EVENT_TIMESTAMP, LABEL, SPLIT = "entity_id", "event_timestamp", "label", "split"
ROLE_COLUMNS = (ENTITY_ID, EVENT_TIMESTAMP, LABEL, SPLIT)
DIGITS_SCALE = 16.0  # scikit-learn's digits are 8x8 images with pixel values 0..16


@dataclass(frozen=True)
class SourceInfo:
    """What a source holds, read without loading it: enough to validate a config up front."""

    path: str
    format: str
    columns: list[str]
    features: list[str]


@dataclass(frozen=True)
class IngestResult:
    """Reference to the ingested raw Parquet file and its shape."""

    path: str
    rows: int
    features: list[str]
    has_label: bool
    fingerprint: str
    content_digest: str


@dataclass(frozen=True)
class NormalizedData:
    """Reference to the normalized Parquet file, its normalizer spec and split sizes."""

    path: str
    spec_path: str
    rows: int
    features: list[str]
    split_rows: dict[str, int]
    has_label: bool


def _source_columns(src: SourceConfig) -> tuple[str, list[str]]:
    fmt = src.resolved_format
    if fmt == "builtin":
        return fmt, [f"pixel_{r}_{c}" for r in range(8) for c in range(8)] + ["target"]
    path = Path(src.path)
    if not path.exists():
        raise ConfigError(f"source file {src.path!r} does not exist")
    if fmt == "csv":
        try:
            head = pd.read_csv(path, sep=src.delimiter, nrows=0, skipinitialspace=True)
        except (pd.errors.EmptyDataError, UnicodeDecodeError, pd.errors.ParserError) as err:
            raise ConfigError(f"cannot read CSV header of {src.path!r}: {err}") from None
        return fmt, [str(c) for c in head.columns]
    try:
        import pyarrow.dataset as ds

        return fmt, list(ds.dataset(path, format="parquet").schema.names)
    except (pa.ArrowInvalid, OSError) as err:
        raise ConfigError(f"cannot read Parquet schema of {src.path!r}: {err}") from None


def inspect_source(src: SourceConfig) -> SourceInfo:
    """Check a source exists and its role columns are present; no data is loaded or written."""
    fmt, columns = _source_columns(src)
    label = "target" if fmt == "builtin" else src.label
    roles = {"entity_id": src.entity_id, "timestamp": src.timestamp, "label": label}
    for role, col in roles.items():
        if col is not None and col not in columns:
            raise ConfigError(f"source.{role} column {col!r} is not in {src.path!r}")
    unknown = [c for c in (src.include or []) + src.exclude if c not in columns]
    if unknown:
        raise ConfigError(f"source.include/exclude name columns not in {src.path!r}: {unknown}")
    taken = {c for c in roles.values() if c is not None}
    candidates = src.include if src.include is not None else columns
    features = [c for c in candidates if c not in taken and c not in src.exclude]
    clash = [c for c in features if c in ROLE_COLUMNS]
    if clash:
        raise ConfigError(
            f"feature column(s) {clash} clash with aepipe's reserved names; exclude or rename them"
        )
    if not features:
        raise ConfigError(f"source {src.path!r} has no feature columns left after roles/excludes")
    return SourceInfo(src.path, fmt, columns, features)


def source_fingerprint(cfg: PipelineConfig) -> str:
    """Stable id of the source and the ingest settings: same data and settings, same folder."""
    src = cfg.source
    h = hashlib.sha256(src.model_dump_json().encode())
    h.update(json.dumps([cfg.test_fraction, cfg.val_fraction, cfg.train.seed]).encode())
    if src.resolved_format == "builtin":
        import sklearn

        h.update(f"sklearn-{sklearn.__version__}".encode())
    else:
        for p in sorted(Path(src.path).rglob("*")) if Path(src.path).is_dir() else [Path(src.path)]:
            st = p.stat()
            h.update(f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def content_digest(src: SourceConfig) -> str:
    """SHA-256 of the source's bytes (every file of a folder, in order), streamed."""
    h = hashlib.sha256()
    if src.resolved_format == "builtin":
        from sklearn.datasets import load_digits

        h.update(np.ascontiguousarray(load_digits().data).tobytes())
        return h.hexdigest()
    root = Path(src.path)
    for p in sorted(root.rglob("*")) if root.is_dir() else [root]:
        if p.is_file():
            h.update(str(p.relative_to(root) if root.is_dir() else p.name).encode())
            with p.open("rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
    return h.hexdigest()


def _read_frame(src: SourceConfig, info: SourceInfo) -> tuple[pd.DataFrame, str | None]:
    if info.format == "builtin":
        from sklearn.datasets import load_digits

        bunch = load_digits(as_frame=True)
        return bunch.frame, "target"
    if info.format == "csv":
        try:
            frame = pd.read_csv(
                src.path,
                sep=src.delimiter,
                skipinitialspace=True,
                na_values=src.na_values,
                keep_default_na=False,
            )
        except (pd.errors.ParserError, UnicodeDecodeError) as err:
            raise ConfigError(f"cannot parse CSV {src.path!r}: {err}".splitlines()[0]) from None
    else:
        frame = pq.read_table(src.path).to_pandas()
    return frame, src.label


def _atomic_write(table: pa.Table, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def ingest_source(cfg: PipelineConfig, stores: Stores) -> IngestResult:
    """Read the source and write it as raw Parquet with entity id, event time and label."""
    info = inspect_source(cfg.source)
    frame, label = _read_frame(cfg.source, info)
    if len(frame) == 0:
        raise ConfigError(f"source {cfg.source.path!r} has no rows")
    src = cfg.source
    ids = (
        frame[src.entity_id].astype(str)
        if src.entity_id
        else pd.Series(np.arange(len(frame)).astype(str))
    )
    if ids.duplicated().any():
        dup = ids[ids.duplicated()].iloc[0]
        raise ConfigError(f"entity id column {src.entity_id!r} has duplicates (first: {dup!r})")
    if src.timestamp:
        ts = pd.to_datetime(frame[src.timestamp], utc=True, errors="coerce")
        if ts.isna().any():
            first = int(np.flatnonzero(ts.isna().to_numpy())[0])
            raise ConfigError(
                f"timestamp column {src.timestamp!r} has {int(ts.isna().sum())} unparseable "
                f"values (first at row {first}: {frame[src.timestamp].iloc[first]!r})"
            )
    else:
        ts = pd.Series(pd.Timestamp(datetime.now(UTC)), index=range(len(frame)))
    table = pa.Table.from_pandas(frame[info.features], preserve_index=False)
    if label:
        table = table.add_column(0, LABEL, pa.array(frame[label].to_numpy()))
    table = table.add_column(0, EVENT_TIMESTAMP, utc_timestamps(ts))
    table = table.add_column(0, ENTITY_ID, pa.array(ids.to_numpy(), pa.string()))
    fp = source_fingerprint(cfg)
    folder = stores.data_dir / cfg.dataset / fp
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "raw.parquet"
    _atomic_write(table, path)
    digest = content_digest(src)
    return IngestResult(str(path), table.num_rows, info.features, bool(label), fp, digest)


def utc_timestamps(values: pd.Series) -> pa.Array:
    """Arrow ``timestamp[us, UTC]`` array of a tz-aware pandas Series."""
    naive = values.dt.tz_convert("UTC").dt.tz_localize(None).dt.as_unit("us").to_numpy()
    return pa.array(naive, pa.timestamp("us")).cast(pa.timestamp("us", tz="UTC"))


def assign_splits(
    ids: pd.Series, test_fraction: float, val_fraction: float, seed: int
) -> np.ndarray:
    """'train' / 'val' / 'test' per row from a seeded hash of the entity id: stable across runs."""
    key = f"aepipe{seed:010d}"[-16:]
    h = pd.util.hash_pandas_object(ids.astype(str), index=False, hash_key=key).to_numpy()
    u = (h >> np.uint64(11)).astype(np.float64) / float(1 << 53)
    return np.where(
        u < test_fraction, "test", np.where(u < test_fraction + val_fraction, "val", "train")
    )


def normalize_dataset(ingested: IngestResult, cfg: PipelineConfig) -> NormalizedData:
    """Fit the normalizer on the training split, transform all rows, write Parquet + JSON spec."""
    raw_table = pq.read_table(ingested.path)
    raw = raw_table.drop_columns([EVENT_TIMESTAMP]).to_pandas()
    splits = assign_splits(raw[ENTITY_ID], cfg.test_fraction, cfg.val_fraction, cfg.train.seed)
    train_rows = raw.loc[splits == "train", ingested.features]
    if len(train_rows) == 0:
        raise ConfigError(f"no rows fell in the training split ({len(raw)} rows in all)")
    if cfg.source.resolved_format == "builtin":
        normalizer = Normalizer.fit_scaled(ingested.features, DIGITS_SCALE)
    else:
        try:
            normalizer = Normalizer.fit(train_rows, max_levels=cfg.source.max_levels)
        except SchemaError as err:
            raise ConfigError(str(err)) from None
    try:
        matrix = normalizer.transform(raw[ingested.features])
    except SchemaError as err:
        raise ConfigError(str(err)) from None
    arrays: dict[str, pa.Array] = {
        ENTITY_ID: raw_table.column(ENTITY_ID),
        EVENT_TIMESTAMP: raw_table.column(EVENT_TIMESTAMP),
    }
    if ingested.has_label:
        arrays[LABEL] = raw_table.column(LABEL)
    arrays[SPLIT] = pa.array(splits, pa.string())
    names = normalizer.output_columns
    for j, name in enumerate(names):
        arrays[name] = pa.array(matrix[:, j], pa.float32())
    folder = Path(ingested.path).parent
    path = folder / "normalized.parquet"
    _atomic_write(pa.table(arrays), path)
    spec_path = normalizer.save(folder / "normalizer.json")
    counts = {s: int((splits == s).sum()) for s in ("train", "val", "test")}
    return NormalizedData(str(path), str(spec_path), len(raw), names, counts, ingested.has_label)


ingest = task(name="ingest", retries=2, retry_delay_seconds=[1, 5])(ingest_source)
normalize = task(name="normalize")(normalize_dataset)
