"""Ingest: read a source (built-in digits, CSV, Parquet) into Parquet with its column roles,
then normalize it into model-ready features with a fitted, saved normalizer."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from prefect import task

from aepipe.settings import Stores
from tasks import readers
from tasks.config import ConfigError, PipelineConfig, SourceConfig, io_task
from tasks.normalize import Normalizer, SchemaError

ENTITY_ID, EVENT_TIMESTAMP, LABEL, SPLIT = "entity_id", "event_timestamp", "label", "split"
ROLE_COLUMNS = (ENTITY_ID, EVENT_TIMESTAMP, LABEL, SPLIT)
DIGITS_SCALE = 16.0
NORMALIZE_BATCH = 65_536  # scikit-learn's digits are 8x8 images with pixel values 0..16


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
    pixel_scale: float | None = None
    quarantined: int = 0
    quarantine_path: str | None = None


@dataclass(frozen=True)
class NormalizedData:
    """Reference to the normalized Parquet file, its normalizer spec and split sizes."""

    path: str
    spec_path: str
    rows: int
    features: list[str]
    split_rows: dict[str, int]
    has_label: bool


ARRAY_FORMATS = ("images", "idx", "npz")


def _array_columns(src: SourceConfig, fmt: str) -> list[str]:
    """Columns an array source will have (``label`` last when it has labels), read cheaply."""
    path = Path(src.path)
    try:
        if fmt == "images":
            from PIL import Image

            files = readers.list_images(path)
            if not files:
                raise readers.SourceReadError(f"no image files under {src.path!r}")
            if src.image_size is not None and src.image_mode != "auto":
                h, w = src.image_size
                channels = 1 if src.image_mode == "L" else 3
            else:
                with Image.open(path / files[0]) as img:
                    w, h = img.size
                    gray = img.mode in readers.GRAY_MODES
                h, w = src.image_size or (h, w)
                mode = src.image_mode if src.image_mode != "auto" else ("L" if gray else "RGB")
                channels = 1 if mode == "L" else 3
            nested = all("/" in f for f in files)
            return readers.pixel_columns((h, w, channels)) + ([LABEL] if nested else [])
        # headers only: the data itself is read once, by the ingest
        if fmt == "idx":
            _, _, columns = readers.idx_layout(readers.idx_shape(path))
            has_labels = readers.idx_labels_path(path, src.labels_path) is not None
        else:
            shape, has_labels = readers.npz_x_shape(path)
            if len(shape) < 2:
                raise readers.SourceReadError(
                    f"'X' in {src.path!r} must have rows and columns, shape {shape}"
                )
            columns = [f"x_{i}" for i in range(int(np.prod(shape[1:])))]
    except (readers.SourceReadError, OSError) as err:
        raise ConfigError(str(err).splitlines()[0]) from None
    return columns + ([LABEL] if has_labels else [])


def _source_columns(src: SourceConfig) -> tuple[str, list[str]]:
    fmt = src.resolved_format
    if fmt == "builtin":
        return fmt, [f"pixel_{r}_{c}" for r in range(8) for c in range(8)] + ["target"]
    path = Path(src.path)
    if not path.exists() and not (fmt == "parquet" and any(c in src.path for c in "*?[")):
        raise ConfigError(f"source file {src.path!r} does not exist")
    if fmt in ARRAY_FORMATS:
        if src.entity_id or src.timestamp or src.include is not None or src.exclude:
            raise ConfigError(
                f"source.entity_id/timestamp/include/exclude apply to tables, not {fmt} sources"
            )
        return fmt, _array_columns(src, fmt)
    if fmt == "csv":
        try:
            head = pd.read_csv(
                path,
                sep=src.delimiter,
                nrows=0 if src.header else 1,
                header=0 if src.header else None,
                skipinitialspace=src.skip_initial_space,
                quotechar=src.quote_char or '"',
                quoting=3 if src.quote_char is None else 0,
            )
        except (pd.errors.EmptyDataError, UnicodeDecodeError, pd.errors.ParserError) as err:
            first = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise ConfigError(f"cannot read CSV header of {src.path!r}: {first}") from None
        if not src.header:
            return fmt, [f"col_{i}" for i in range(len(head.columns))]
        return fmt, [str(c).strip() for c in head.columns]
    try:
        import pyarrow.dataset as ds

        from tasks.tabular import parquet_files

        files = parquet_files(src.path)
        if not files:
            raise ConfigError(f"no Parquet files match {src.path!r}")
        return fmt, list(ds.dataset(files, format="parquet").schema.names)
    except (pa.ArrowInvalid, OSError) as err:
        raise ConfigError(f"cannot read Parquet schema of {src.path!r}: {err}") from None


def inspect_source(src: SourceConfig) -> SourceInfo:
    """Check a source exists and its role columns are present; no data is loaded or written."""
    fmt, columns = _source_columns(src)
    if fmt == "builtin":
        label = "target"
    elif fmt in ARRAY_FORMATS:
        label = LABEL if LABEL in columns else None
    else:
        label = src.label
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
    if fmt in ARRAY_FORMATS:
        return SourceInfo(src.path, fmt, columns, features)
    clash = [c for c in features if c in ROLE_COLUMNS]
    if clash:
        raise ConfigError(
            f"feature column(s) {clash} clash with aepipe's reserved names; exclude or rename them"
        )
    if not features:
        raise ConfigError(f"source {src.path!r} has no feature columns left after roles/excludes")
    return SourceInfo(src.path, fmt, columns, features)


def source_files(src: SourceConfig) -> list[str]:
    """The files a (non-built-in) source reads: the file, a folder's files, or glob matches."""
    from tasks.tabular import parquet_files

    if os.path.isdir(src.path):
        return [
            os.path.join(folder, n)
            for folder, _, names in sorted(os.walk(src.path))
            for n in sorted(names)
        ]
    if src.resolved_format == "parquet":
        return parquet_files(src.path)
    return [src.path]


def source_fingerprint(cfg: PipelineConfig) -> str:
    """Stable id of the source and the ingest settings: same data and settings, same folder."""
    src = cfg.source
    h = hashlib.sha256(src.model_dump_json().encode())
    h.update(json.dumps([cfg.test_fraction, cfg.val_fraction, cfg.train.seed]).encode())
    if src.resolved_format == "builtin":
        import sklearn

        h.update(f"sklearn-{sklearn.__version__}".encode())
    elif src.fingerprint == "content":
        h.update(content_digest(src).encode())
    else:
        root = Path(src.path).resolve()
        h.update(str(root).encode())
        for p in source_files(src):  # os.stat on strings: cheap on 70,000 files
            st = os.stat(p)
            h.update(f"{p}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def content_digest(src: SourceConfig) -> str:
    """SHA-256 of the source's bytes (every file of a folder, in order), streamed."""
    h = hashlib.sha256()
    if src.resolved_format == "builtin":
        from sklearn.datasets import load_digits

        h.update(np.ascontiguousarray(load_digits().data).tobytes())
        return h.hexdigest()
    for p in source_files(src):
        h.update(os.path.basename(p).encode())
        with open(p, "rb") as fh:
            for block in iter(lambda fh=fh: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def array_digest(data: readers.ArrayData) -> str:
    """SHA-256 of what an array source holds once decoded (ids, pixels, labels): the data
    set's digest without reading the files a second time."""
    h = hashlib.sha256("\n".join(data.ids).encode())
    h.update(np.ascontiguousarray(data.features).tobytes())
    if data.labels is not None:
        h.update(np.asarray(data.labels).astype(str).tobytes())
    return h.hexdigest()


def _atomic_write(table: pa.Table, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def _read_array(src: SourceConfig, info: SourceInfo) -> readers.ArrayData:
    if info.format == "builtin":  # scikit-learn's digits: 8x8 images, pixel values 0..16
        from sklearn.datasets import load_digits

        digits = load_digits()
        ids = [str(i) for i in range(len(digits.target))]
        return readers.ArrayData(
            digits.data, ids, digits.target, [], (8, 8, 1), DIGITS_SCALE, info.features
        )
    try:
        if info.format == "images":
            return readers.read_image_folder(src.path, src.image_size, src.image_mode)
        if info.format == "idx":
            return readers.read_idx_source(src.path, src.labels_path)
        return readers.read_npz(src.path)
    except readers.SourceReadError as err:
        raise ConfigError(str(err).splitlines()[0]) from None


def _write_quarantine(rows: list[tuple[str, str]], folder: Path) -> Path | None:
    path = folder / "quarantine.parquet"
    if not rows:
        path.unlink(missing_ok=True)
        return None
    table = pa.table({"location": [r[0] for r in rows], "reason": [r[1] for r in rows]})
    _atomic_write(table, path)
    return path


def ingest_source(cfg: PipelineConfig, stores: Stores) -> IngestResult:
    """Read the source and write it as raw Parquet with entity id, event time and label.

    Rows that cannot be read (an undecodable image, say) go to ``quarantine.parquet`` beside
    it with their location and reason; rows in = rows written + rows quarantined.
    """
    info = inspect_source(cfg.source)
    fp = source_fingerprint(cfg)
    folder = stores.data_dir / cfg.dataset / fp
    if info.format in (*ARRAY_FORMATS, "builtin"):
        return _ingest_array(cfg, info, folder, fp)
    return _ingest_table(cfg, info, folder, fp)


def _check_quarantine(
    cfg: PipelineConfig, rows_in: int, quarantined: int, where: Path | None
) -> None:
    if rows_in == 0:
        raise ConfigError(f"source {cfg.source.path!r} has no rows")
    share = quarantined / rows_in
    if share > cfg.source.max_quarantine_fraction:
        raise ConfigError(
            f"{quarantined} of {rows_in} rows ({share:.1%}) of {cfg.source.path!r} were "
            f"quarantined, more than source.max_quarantine_fraction "
            f"{cfg.source.max_quarantine_fraction:.1%}; see {where}"
        )
    if quarantined == rows_in:
        raise ConfigError(f"no usable rows in {cfg.source.path!r}; see {where}")


def _ingest_table(cfg: PipelineConfig, info: SourceInfo, folder: Path, fp: str) -> IngestResult:
    """Stream a CSV or Parquet source into raw Parquet, batch by batch."""
    from tasks.tabular import TableReader

    src = cfg.source
    label = src.label
    reader = TableReader(src, info.columns, info.features, label)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "raw.parquet"
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    now = datetime.now(UTC)
    writer: pq.ParquetWriter | None = None
    quarantine: list[tuple[str, str]] = []
    rows_out = 0
    try:
        for chunk in reader.chunks():
            quarantine.extend(chunk.quarantine)
            frame = chunk.frame
            n = len(frame)
            ts = frame["__ts"] if "__ts" in frame else pd.Series(pd.Timestamp(now), index=range(n))
            arrays = {
                ENTITY_ID: pa.array(frame["__id"].to_numpy(dtype=object), pa.string()),
                EVENT_TIMESTAMP: utc_timestamps(ts),
            }
            if label:
                arrays[LABEL] = pa.array(
                    frame["__label"].to_numpy(dtype=object),
                    pa.string() if src.resolved_format == "csv" else None,
                )
            for col in info.features:
                kind = reader.kinds[col]
                typ = {"num": pa.float64(), "bool": pa.bool_(), "cat": pa.string()}[kind]
                arrays[col] = pa.array(frame[col].to_numpy(dtype=object), typ, from_pandas=True)
            table = pa.table(arrays)
            if writer is None:
                writer = pq.ParquetWriter(tmp, table.schema)
            writer.write_table(table.cast(writer.schema))
            rows_out += n
    except (pa.ArrowInvalid, UnicodeDecodeError) as err:
        if writer is not None:
            writer.close()
        tmp.unlink(missing_ok=True)
        first = str(err).splitlines()[0]
        raise ConfigError(f"cannot read {src.path!r}: {first}") from None
    if writer is not None:
        writer.close()
    quarantine = reader.ragged + quarantine
    where = _write_quarantine(quarantine, folder)
    rows_in = reader.rows_in + len(reader.ragged)
    try:
        _check_quarantine(cfg, rows_in, len(quarantine), where)
    except ConfigError:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)
    return IngestResult(
        str(path),
        rows_out,
        info.features,
        bool(label),
        fp,
        content_digest(src),
        None,
        len(quarantine),
        str(where) if where else None,
    )


def _ingest_array(cfg: PipelineConfig, info: SourceInfo, folder: Path, fp: str) -> IngestResult:
    data = _read_array(cfg.source, info)
    rows_in = len(data.ids) + len(data.quarantine)
    if rows_in == 0:
        raise ConfigError(f"source {cfg.source.path!r} has no rows")
    folder.mkdir(parents=True, exist_ok=True)
    quarantine = _write_quarantine(data.quarantine, folder)
    _check_quarantine(cfg, rows_in, len(data.quarantine), quarantine)
    arrays = [pa.array(data.features[:, j]) for j in range(data.features.shape[1])]
    table = pa.Table.from_arrays(arrays, names=data.columns)
    if data.labels is not None:
        table = table.add_column(0, LABEL, pa.array(data.labels))
    now = pd.Series(pd.Timestamp(datetime.now(UTC)), index=range(len(data.ids)))
    table = table.add_column(0, EVENT_TIMESTAMP, utc_timestamps(now))
    table = table.add_column(0, ENTITY_ID, pa.array(data.ids, pa.string()))
    path = folder / "raw.parquet"
    _atomic_write(table, path)
    return IngestResult(
        str(path),
        table.num_rows,
        data.columns,
        data.labels is not None,
        fp,
        array_digest(data),
        data.scale,
        len(data.quarantine),
        str(quarantine) if quarantine else None,
    )


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
    """Fit the normalizer on the training split, transform all rows, write Parquet + JSON spec.

    Two passes over the raw Parquet in batches: the first assigns splits and keeps the
    training rows' raw features (what fitting needs), the second transforms and writes
    batch by batch, so memory holds the training features, not the whole table twice.
    """
    source = pq.ParquetFile(ingested.path)
    features = ingested.features
    train_parts: list[pd.DataFrame] = []
    counts = {"train": 0, "val": 0, "test": 0}
    first_pass = [ENTITY_ID] if ingested.pixel_scale else [ENTITY_ID, *features]
    for batch in source.iter_batches(batch_size=NORMALIZE_BATCH, columns=first_pass):
        frame = batch.to_pandas()
        splits = assign_splits(
            frame[ENTITY_ID], cfg.test_fraction, cfg.val_fraction, cfg.train.seed
        )
        for name in counts:
            counts[name] += int((splits == name).sum())
        if not ingested.pixel_scale:  # fixed pixel scaling fits on nothing
            train_parts.append(frame.loc[splits == "train", features])
    rows = sum(counts.values())
    if counts["train"] == 0:
        raise ConfigError(f"no rows fell in the training split ({rows} rows in all)")
    try:
        if ingested.pixel_scale:
            normalizer = Normalizer.fit_scaled(features, ingested.pixel_scale)
        else:
            normalizer = Normalizer.fit(
                pd.concat(train_parts, ignore_index=True),
                max_levels=cfg.source.max_levels,
                scaling=cfg.normalize.scaling,
                per_column=cfg.normalize.columns,
                log1p=cfg.normalize.log1p,
            )
    except SchemaError as err:
        raise ConfigError(str(err)) from None
    del train_parts
    names = normalizer.output_columns
    folder = Path(ingested.path).parent
    path = folder / "normalized.parquet"
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    keep = [ENTITY_ID, EVENT_TIMESTAMP] + ([LABEL] if ingested.has_label else [])
    writer: pq.ParquetWriter | None = None
    try:
        for batch in source.iter_batches(batch_size=NORMALIZE_BATCH):
            table = pa.Table.from_batches([batch])
            frame = table.select(features).to_pandas()
            splits = assign_splits(
                table.column(ENTITY_ID).to_pandas(),
                cfg.test_fraction,
                cfg.val_fraction,
                cfg.train.seed,
            )
            matrix = normalizer.transform(frame)
            arrays = {name: table.column(name) for name in keep}
            arrays[SPLIT] = pa.array(splits, pa.string())
            for j, name in enumerate(names):
                arrays[name] = pa.array(matrix[:, j], pa.float32())
            out = pa.table(arrays)
            if writer is None:
                writer = pq.ParquetWriter(tmp, out.schema)
            writer.write_table(out)
    except SchemaError as err:
        if writer is not None:
            writer.close()
            writer = None
        tmp.unlink(missing_ok=True)
        raise ConfigError(str(err)) from None
    finally:
        if writer is not None:
            writer.close()
    os.replace(tmp, path)
    spec_path = normalizer.save(folder / "normalizer.json")
    return NormalizedData(str(path), str(spec_path), rows, names, counts, ingested.has_label)


def _digest(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def ingest_cache_key(context: Any, parameters: dict[str, Any]) -> str:
    """Prefect cache key of an ingest: the store and the source's fingerprint."""
    cfg, stores = parameters["cfg"], parameters["stores"]
    return "aepipe-ingest-" + _digest(str(stores.home), cfg.dataset, source_fingerprint(cfg))


def normalize_cache_key(context: Any, parameters: dict[str, Any]) -> str:
    """Prefect cache key of a normalization: the ingest it reads and the normalize settings."""
    ingested, cfg = parameters["ingested"], parameters["cfg"]
    return "aepipe-normalize-" + _digest(
        ingested.path, ingested.fingerprint, cfg.normalize.model_dump(mode="json")
    )


# Cached by Prefect across runs: results persist as JSON (never pickles) in Prefect's result
# storage, so a scheduled run on an unchanged source skips both stages.
ingest = io_task("ingest")(ingest_source).with_options(
    cache_key_fn=ingest_cache_key, persist_result=True, result_serializer="json"
)
normalize = task(
    name="normalize",
    cache_key_fn=normalize_cache_key,
    persist_result=True,
    result_serializer="json",
)(normalize_dataset)


def cached_stages(cfg: PipelineConfig, stores: Stores) -> tuple[Any, Any]:
    """The ingest and normalize tasks, told to refresh their cache when the files a cached
    result points to are gone (say, someone cleared the data folder)."""
    folder = stores.data_dir / cfg.dataset / source_fingerprint(cfg)
    return (
        ingest.with_options(refresh_cache=not (folder / "raw.parquet").exists()),
        normalize.with_options(refresh_cache=not (folder / "normalized.parquet").exists()),
    )
