"""What the data stages hand each other: the references an ingest and a normalization
return (their files and shapes, cached by Prefect as JSON), the files' names, and
:class:`ReadAlong`, the work a later stage does on the rows while the ingest reads them.

Both stages import this module and neither imports the other: the flows wire them
(``flows/ingest.py`` hands the normalize stage's :class:`ReadAlong` to the ingest).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from ae_models.preprocessing.normalizer import NORMALIZER_FILE
from tasks.io.parts import reason_kinds

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa

    from tasks.io.arrays import ArrayData

RAW_FILE, QUARANTINE_FILE = "raw.parquet", "quarantine.parquet"
NORMALIZED_FILE = "normalized.parquet"
SPEC_FILE = NORMALIZER_FILE  # the normalizer's spec, copied into the model folder as is


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
    # fixed-scale sources (images, IDX, digits) are normalized as they are read: rows per
    # split of the normalized.parquet the ingest wrote beside raw.parquet; None otherwise
    split_rows: dict[str, int] | None = None
    roles: dict[str, str] = field(default_factory=dict)  # role column -> its role
    left_out: dict[str, str] = field(default_factory=dict)  # source column -> why
    # where the source stood when read (a snapshot, a watermark, a file time; None: its
    # reader cannot say), and the marker this ingest read past (None: the whole source)
    marker: str | None = None
    since: str | None = None

    def quarantine_note(self) -> str:
        """`` (+N quarantined: 2 x duplicate entity id …; <path>)`` for a run's summary, the
        commonest reasons first; '' when no row was set aside."""
        if not self.quarantined:
            return ""
        kinds = reason_kinds(self.quarantine_path)
        reasons = f": {kinds}" if kinds else ""
        return f" (+{self.quarantined} quarantined{reasons}; {self.quarantine_path})"

    def moved_to(self, folder: str | os.PathLike[str]) -> IngestResult:
        """This result with its files named in ``folder`` (a home's copy of the data set's
        folder; a cached result names the folder of the home that made it)."""
        q = str(Path(folder) / QUARANTINE_FILE) if self.quarantine_path else None
        return dataclasses.replace(self, path=str(Path(folder) / RAW_FILE), quarantine_path=q)

    def files(self) -> tuple[str | None, ...]:
        """The data-store files this result names (:mod:`stores.data`'s accessor)."""
        return (self.path, self.quarantine_path)


@dataclass(frozen=True)
class IngestedPart:
    """What one partition wrote: its raw Parquet (None when no row was usable), its quarantined
    rows, the rows it read, and a digest of what it read."""

    index: int
    path: str | None
    rows_in: int
    rows_out: int
    quarantine: str | None
    quarantined: int
    digest: str
    pixel_scale: float | None = None
    normalized: str | None = None  # fixed-scale sources: the part's rows normalized
    split_rows: dict[str, int] | None = None
    keys: str | None = None  # the written rows' key hashes, on this machine (for the merge)


@dataclass(frozen=True)
class NormalizedData:
    """Reference to the normalized Parquet file, its normalizer spec and split sizes."""

    path: str
    spec_path: str
    rows: int
    features: list[str]
    split_rows: dict[str, int]
    has_label: bool

    def files(self) -> tuple[str, ...]:
        """The data-store files this result names (:mod:`stores.data`'s accessor)."""
        return (self.path, self.spec_path)


class TableAlong(Protocol):
    """Takes a table's rows batch by batch as one ingest pass reads them."""

    def add(self, ids: pa.Array | pa.ChunkedArray, features: pa.Table) -> Any:
        """Take one batch: its entity ids and its feature columns."""

    def metadata(self) -> dict[str, str]:
        """What it gathered, as metadata of the raw Parquet file (empty: nothing usable)."""


class ScaledAlong(Protocol):
    """Writes fixed-scale rows (pixels), as one ingest partition decodes them, to ``path``."""

    path: Path
    split_rows: dict[str, int] | None  # rows per split written; None until a row is

    def __enter__(self) -> ScaledAlong: ...

    def __exit__(self, *exc: object) -> bool | None: ...

    def write(self, data: ArrayData, pixels: np.ndarray | None, roles: dict[str, Any]) -> None:
        """Take a decoded block: its rows as bytes (None: other numbers) and role columns."""


class ReadAlong(Protocol):
    """Work a later stage does on the rows while the ingest reads them, so they are not
    read a second time: the flow hands it to the ingest, which knows nothing of the work."""

    # raw-file metadata that holds only for a single pass (a merge of parts drops it)
    metadata_keys: tuple[str, ...]

    def table(self, kinds: dict[str, str]) -> TableAlong | None:
        """For a table read whole in one pass (column kinds ``num``/``bool``/``cat``); None:
        nothing to do."""

    def scaled(self, path: Path) -> ScaledAlong:
        """For one partition of fixed-scale rows: a writer of their work to ``path``."""

    def merge_scaled(
        self, folder: Path, columns: list[str], scale: float, parts: Sequence[str]
    ) -> list[Path]:
        """Join the partitions' files (in order) into ``folder``; the files made there."""
