"""Data sets that ship with aepipe's dependencies: ``digits``, scikit-learn's 1,797 8x8
images of handwritten digits, pixel values 0..16, labelled (``target``)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from tasks.io.readers import BUILTIN_SOURCES
from tasks.io.readers.arrays_base import ArrayReader
from tasks.io.readers.base import IngestPart

if TYPE_CHECKING:
    from tasks.config import SourceConfig
    from tasks.io.arrays import ArrayData

DIGITS_SCALE = 16.0  # scikit-learn's digits are 8x8 images with pixel values 0..16
DIGITS_ROWS, DIGITS_COLUMNS = 1797, [f"pixel_{r}_{c}" for r in range(8) for c in range(8)]


class BuiltinReader(ArrayReader):
    """scikit-learn's digits, by the name ``digits``."""

    name = "builtin"

    def claims(self, path: str) -> bool:
        """The names of the built-in data sets."""
        return path in BUILTIN_SOURCES

    def check_exists(self, src: SourceConfig) -> None:
        """Always there: it ships with scikit-learn."""

    def columns(self, src: SourceConfig, listing: list[str] | None = None) -> list[str]:
        """64 pixels and the digit."""
        return [*DIGITS_COLUMNS, "target"]

    def label(self, src: SourceConfig, columns: list[str]) -> str | None:
        """The digit."""
        return "target"

    def has_label(self, src: SourceConfig, columns: list[str], labelled: bool) -> bool:
        """Labelled."""
        return True

    def blocks(self, src: SourceConfig, part: IngestPart, plan: Any) -> Iterator[ArrayData]:
        """All 1,797 images in one block."""
        from sklearn.datasets import load_digits

        from tasks.io.arrays import ArrayData

        digits = load_digits()
        ids = [str(i) for i in range(len(digits.target))]
        yield ArrayData(
            digits.data, ids, digits.target, [], (8, 8, 1), DIGITS_SCALE, DIGITS_COLUMNS
        )

    def change_digest(self, src: SourceConfig, listing: list[str] | None = None) -> str:
        """The scikit-learn release that ships it (importing scikit-learn takes a second)."""
        from importlib.metadata import version

        return f"sklearn-{version('scikit-learn')}"

    def content_digest(self, src: SourceConfig) -> str:
        """SHA-256 of the pixels."""
        from sklearn.datasets import load_digits

        return hashlib.sha256(np.ascontiguousarray(load_digits().data).tobytes()).hexdigest()

    def write_bound(self, src: SourceConfig, plan: Any) -> int:
        """Its rows of 64 pixels, twice, 8 bytes each."""
        return 2 * DIGITS_ROWS * len(DIGITS_COLUMNS) * 8


READER = BuiltinReader()
