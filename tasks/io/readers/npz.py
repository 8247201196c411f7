"""NPZ files: the array ``X`` (rows by anything), ``y`` its label when present."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tasks.io.readers.arrays_base import ArrayReader
from tasks.io.readers.base import IngestPart

if TYPE_CHECKING:
    from tasks.config import SourceConfig
    from tasks.io.arrays import ArrayData


class NpzReader(ArrayReader):
    """An NPZ file, read whole (its headers are checked against memory first)."""

    name = "npz"
    suffixes = (".npz",)

    def columns(self, src: SourceConfig, listing: list[str] | None = None) -> list[str]:
        """``x_0`` ... a column per value of a row of ``X``, ``label`` when ``y`` is there."""
        from ae_models.vocabulary import LABEL
        from tasks.errors import ConfigError
        from tasks.io import arrays

        try:
            shape, has_labels = arrays.npz_x_shape(Path(src.path))
            if len(shape) < 2:
                raise arrays.SourceReadError(
                    f"'X' in {src.path!r} must have rows and columns, shape {shape}"
                )
        except (arrays.SourceReadError, OSError) as err:
            raise ConfigError(str(err).splitlines()[0]) from None
        columns = [f"x_{i}" for i in range(int(np.prod(shape[1:])))]
        return columns + ([LABEL] if has_labels else [])

    def blocks(self, src: SourceConfig, part: IngestPart, plan: Any) -> Iterator[ArrayData]:
        """The whole array, one block."""
        from tasks.errors import ConfigError
        from tasks.io import arrays

        try:
            data = arrays.read_npz(src.path)
        except arrays.SourceReadError as err:
            raise ConfigError(str(err).splitlines()[0]) from None
        yield data


READER = NpzReader()
