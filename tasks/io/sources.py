"""What a source holds, read without loading it, and how a run tells it is unchanged: the
checks of a config against its source (:func:`inspect_source`), the files a source reads, its
fingerprint (paths, sizes, modification times) and the digests of its content."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import numpy as np

from ae_models.preprocessing.tensor_column import LAYOUT
from ae_models.vocabulary import ROLE_COLUMNS
from tasks.config import ConfigError, PipelineConfig, SourceConfig
from tasks.io import arrays
from tasks.io.readers import get_reader, reader_of
from tasks.io.readers.base import SourceReader


@dataclass(frozen=True)
class SourceInfo:
    """What a source holds, read without loading it: enough to validate a config up front."""

    path: str
    format: str
    columns: list[str]
    features: list[str]

    @property
    def reader(self) -> SourceReader:
        """The reader of the source's kind."""
        return get_reader(self.format)


def inspect_source(src: SourceConfig, images: list[str] | None = None) -> SourceInfo:
    """Check a source exists and its role columns are present; no data is loaded or written.
    ``images``: an image folder's listing (``arrays.list_images``), when the caller has it."""
    reader = reader_of(src)
    reader.check_exists(src)
    reader.check_settings(src)
    columns = reader.columns(src, images)
    label = reader.label(src, columns)
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
    if reader.kind == "array":
        return SourceInfo(src.path, reader.name, columns, features)
    clash = [c for c in features if c in ROLE_COLUMNS]
    if clash:
        raise ConfigError(
            f"feature column(s) {clash} clash with aepipe's reserved names; exclude or rename them"
        )
    if not features:
        raise ConfigError(f"source {src.path!r} has no feature columns left after roles/excludes")
    return SourceInfo(src.path, reader.name, columns, features)


def source_fingerprint(cfg: PipelineConfig, images: list[str] | None = None) -> str:
    """Stable id of the source and the ingest settings: same data and settings, same folder.
    It names the Parquet layout too (:data:`~ae_models.preprocessing.tensor_column.LAYOUT`), so
    files an
    older aepipe wrote are never read as this one's: the source is ingested again.
    An image folder's is that of its image files (``images``: their listing, when known)."""
    src = cfg.source
    reader = reader_of(src)
    h = hashlib.sha256(src.model_dump_json().encode())
    h.update(json.dumps([cfg.test_fraction, cfg.val_fraction, cfg.train.seed]).encode())
    h.update(f"layout {LAYOUT}".encode())  # files of another layout are ingested again
    h.update(reader.change_digest(src, images).encode())
    return h.hexdigest()[:16]


def content_digest(src: SourceConfig) -> str:
    """SHA-256 of the source's content (its reader's: a file's bytes, say)."""
    return reader_of(src).content_digest(src)


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
