"""What a source holds, read without loading it, and how a run tells it is unchanged: the
checks of a config against its source (:func:`inspect_source`), the files a source reads, its
fingerprint (paths, sizes, modification times) and the digests of its content."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from ae_models.tensor_column import LAYOUT
from feature_store.schema import LABEL, ROLE_COLUMNS
from tasks.config import ConfigError, PipelineConfig, SourceConfig
from tasks.io import arrays


@dataclass(frozen=True)
class SourceInfo:
    """What a source holds, read without loading it: enough to validate a config up front."""

    path: str
    format: str
    columns: list[str]
    features: list[str]


ARRAY_FORMATS = ("images", "idx", "npz")


def _array_columns(src: SourceConfig, fmt: str, images: list[str] | None) -> list[str]:
    """Columns an array source will have (``label`` last when it has labels), read cheaply;
    ``images`` is an image folder's listing when the caller has it."""
    path = Path(src.path)
    try:
        if fmt == "images":
            from PIL import Image

            files = arrays.list_images(path) if images is None else images
            if not files:
                raise arrays.SourceReadError(f"no image files under {src.path!r}")
            if src.image_size is not None and src.image_mode != "auto":
                h, w = src.image_size
                channels = 1 if src.image_mode == "L" else 3
            else:
                with Image.open(path / files[0]) as img:
                    w, h = img.size
                    gray = img.mode in arrays.GRAY_MODES
                h, w = src.image_size or (h, w)
                mode = src.image_mode if src.image_mode != "auto" else ("L" if gray else "RGB")
                channels = 1 if mode == "L" else 3
            nested = all("/" in f for f in files)
            return arrays.pixel_columns((h, w, channels)) + ([LABEL] if nested else [])
        # headers only: the data itself is read once, by the ingest
        if fmt == "idx":
            _, _, columns = arrays.idx_layout(arrays.idx_shape(path))
            has_labels = arrays.idx_labels_path(path, src.labels_path) is not None
        else:
            shape, has_labels = arrays.npz_x_shape(path)
            if len(shape) < 2:
                raise arrays.SourceReadError(
                    f"'X' in {src.path!r} must have rows and columns, shape {shape}"
                )
            columns = [f"x_{i}" for i in range(int(np.prod(shape[1:])))]
    except (arrays.SourceReadError, OSError) as err:
        raise ConfigError(str(err).splitlines()[0]) from None
    return columns + ([LABEL] if has_labels else [])


def _check_first_line(path: str, header: bool = True) -> None:
    """A ConfigError when the file's first line (gzip too) runs past
    :data:`~tasks.io.tables.MAX_LINE_BYTES` bytes: no CSV header, and pandas would hold it
    whole to find out; or when a file with a ``header`` holds nothing after it (said here,
    before a Prefect server is started for a run that has nothing to read)."""
    import gzip

    from tasks.io.tables import MAX_LINE_BYTES

    opener = gzip.open if path.lower().endswith(".gz") else open
    with opener(path, "rb") as f:
        head = f.read(MAX_LINE_BYTES + 1)
    if len(head) > MAX_LINE_BYTES and b"\n" not in head:
        raise ConfigError(
            f"the first line of {path!r} is longer than {MAX_LINE_BYTES:,} bytes: not a CSV "
            "header aepipe can read"
        )
    first, _, rest = head.partition(b"\n")
    if header and len(head) <= MAX_LINE_BYTES and first.strip() and not rest.strip():
        raise ConfigError(f"source {path!r} has no rows (only its header line)")


def _source_columns(src: SourceConfig, images: list[str] | None) -> tuple[str, list[str]]:
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
        return fmt, _array_columns(src, fmt, images)
    if fmt == "csv":
        try:
            _check_first_line(src.path, src.header)
            head = pd.read_csv(
                path,
                sep=src.delimiter,
                nrows=0 if src.header else 1,
                header=0 if src.header else None,
                skipinitialspace=src.skip_initial_space,
                quotechar=src.quote_char or '"',
                quoting=3 if src.quote_char is None else 0,
                encoding=src.encoding,
            )
        except (
            pd.errors.EmptyDataError,
            UnicodeDecodeError,
            pd.errors.ParserError,
            OSError,
        ) as err:
            first = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise ConfigError(f"cannot read CSV header of {src.path!r}: {first}") from None
        if not src.header:
            return fmt, [f"col_{i}" for i in range(len(head.columns))]
        names = [str(c).strip() for c in head.columns]
        broken = [n for n in names if "\n" in n or "\r" in n]
        if broken:  # rows end at line ends: the header's second line would be read as a row
            raise ConfigError(
                f"the CSV header of {src.path!r} has a line break inside the quoted column "
                f"name {broken[0]!r}; aepipe reads one header line: rename the column"
            )
        return fmt, names
    try:
        import pyarrow.dataset as ds

        from tasks.io.tables import parquet_files

        files = parquet_files(src.path)
        if not files:
            raise ConfigError(f"no Parquet files match {src.path!r}")
        return fmt, list(ds.dataset(files, format="parquet").schema.names)
    except (pa.ArrowInvalid, OSError) as err:
        raise ConfigError(f"cannot read Parquet schema of {src.path!r}: {err}") from None


def inspect_source(src: SourceConfig, images: list[str] | None = None) -> SourceInfo:
    """Check a source exists and its role columns are present; no data is loaded or written.
    ``images``: an image folder's listing (``arrays.list_images``), when the caller has it."""
    fmt, columns = _source_columns(src, images)
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
    from tasks.io.tables import parquet_files

    if os.path.isdir(src.path):
        return [
            os.path.join(folder, n)
            for folder, _, names in sorted(os.walk(src.path))
            for n in sorted(names)
        ]
    if src.resolved_format == "parquet":
        return parquet_files(src.path)
    return [src.path]


def source_fingerprint(cfg: PipelineConfig, images: list[str] | None = None) -> str:
    """Stable id of the source and the ingest settings: same data and settings, same folder.
    It names the Parquet layout too (:data:`~ae_models.tensor_column.LAYOUT`), so files an
    older aepipe wrote are never read as this one's: the source is ingested again.
    An image folder's is that of its image files (``images``: their listing, when known)."""
    src = cfg.source
    h = hashlib.sha256(src.model_dump_json().encode())
    h.update(json.dumps([cfg.test_fraction, cfg.val_fraction, cfg.train.seed]).encode())
    h.update(f"layout {LAYOUT}".encode())  # files of another layout are ingested again
    if src.resolved_format == "builtin":
        from importlib.metadata import version  # importing scikit-learn takes a second

        h.update(f"sklearn-{version('scikit-learn')}".encode())
    elif src.fingerprint == "content":
        h.update(content_digest(src).encode())
    else:
        root = Path(src.path).resolve()
        h.update(str(root).encode())
        if src.resolved_format == "images":
            rel = arrays.list_images(src.path) if images is None else images
            files = [os.path.join(src.path, r) for r in rel]
        else:
            files = source_files(src)
        stats = (os.stat(p) for p in files)  # os.stat on strings: cheap on 70,000 files
        h.update(
            "\n".join(
                f"{p}|{st.st_size}|{st.st_mtime_ns}" for p, st in zip(files, stats, strict=True)
            ).encode()
        )
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


class ArrayDigest:
    """SHA-256 of what an array source holds once decoded (ids, pixels, labels), fed block
    by block in source order: the data set's digest without reading the files a second
    time. Where the blocks split the rows does not change it."""

    def __init__(self) -> None:
        self._ids, self._rows, self._labels = (hashlib.sha256() for _ in range(3))

    def update(self, data: arrays.ArrayData) -> None:
        """Add a block's rows."""
        self._ids.update("".join(f"{i}\n" for i in data.ids).encode())
        self._rows.update(np.ascontiguousarray(data.features).data)  # no copy of the rows
        if data.labels is not None:
            self._labels.update("".join(f"{v}\n" for v in data.labels).encode())

    def hexdigest(self) -> str:
        """The digest of every row added so far."""
        parts = (h.digest() for h in (self._ids, self._rows, self._labels))
        return hashlib.sha256(b"".join(parts)).hexdigest()


def json_digest(*parts: object) -> str:
    """SHA-256 of ``parts`` as canonical JSON: cache keys and digests of settings."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()
