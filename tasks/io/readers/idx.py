"""IDX files (MNIST's format): images or a matrix, labels from a sibling labels file."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tasks.io.readers.arrays_base import ArrayReader
from tasks.io.readers.base import IngestPart

if TYPE_CHECKING:
    from tasks.config import SourceConfig
    from tasks.io.arrays import ArrayData


class IdxReader(ArrayReader):
    """An IDX file, read whole (its header is checked against memory first)."""

    name = "idx"

    def claims(self, path: str) -> bool:
        """``*.idx*`` and MNIST's ``*-ubyte`` names."""
        name = Path(path).name.lower()
        return ".idx" in name or "-ubyte" in name

    def columns(self, src: SourceConfig, listing: list[str] | None = None) -> list[str]:
        """Pixel (or ``x_i``) columns from the header, ``label`` when a labels file is there."""
        from ae_models.vocabulary import LABEL
        from tasks.errors import ConfigError
        from tasks.io import arrays

        path = Path(src.path)
        try:
            _, _, columns = arrays.idx_layout(arrays.idx_shape(path))
            has_labels = arrays.idx_labels_path(path, src.labels_path) is not None
        except (arrays.SourceReadError, OSError) as err:
            raise ConfigError(str(err).splitlines()[0]) from None
        return columns + ([LABEL] if has_labels else [])

    def blocks(self, src: SourceConfig, part: IngestPart, plan: Any) -> Iterator[ArrayData]:
        """The whole array, one block."""
        from tasks.errors import ConfigError
        from tasks.io import arrays

        try:
            data = arrays.read_idx_source(src.path, src.labels_path)
        except arrays.SourceReadError as err:
            raise ConfigError(str(err).splitlines()[0]) from None
        yield data


READER = IdxReader()
