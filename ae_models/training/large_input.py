"""The estimator's inputs larger than memory: a Parquet path or a memory-mapped array, checked
in one streaming pass and opened as streamable sources (:mod:`ae_models.training.streaming`)."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ae_models.training.streaming import (
    ArraySource,
    BlockReader,
    ParquetSource,
    available_memory,
    holdout_mask,
    read_in_order,
    source_bytes,
)


def scan_rows(reader: BlockReader) -> tuple[int, float, float]:
    """Row count, smallest and largest value of ``reader``'s rows, in one pass; a ValueError
    names the first block holding NaN or infinity."""
    rows, lo, hi = 0, math.inf, -math.inf
    for block in read_in_order(reader):
        if len(block):
            if not np.isfinite(block).all():
                bad = int(np.argwhere(~np.isfinite(block))[0][0])
                raise ValueError(
                    f"X holds NaN or infinite values (the first in row {rows + bad} of the "
                    "rows read)"
                )
            lo, hi = min(lo, float(block.min())), max(hi, float(block.max()))
        rows += len(block)
    return rows, lo, hi


@dataclass
class LargeInput:
    """An estimator's ``X`` that may stream: a Parquet file's numeric columns or a
    memory-mapped array; :meth:`source` gives all rows (``None``), the random validation
    share (``True``) or the rest (``False``)."""

    path: str | None
    columns: tuple[str, ...]
    array: np.ndarray | None
    width: int
    holdout: tuple[float, int]  # validation share and seed
    names: np.ndarray | None = None

    def source(self, inside: bool | None) -> ParquetSource | ArraySource:
        """All rows, the validation rows or the training rows of ``X``."""
        held = None if inside is None else (*self.holdout, inside)
        if self.path is not None:
            return ParquetSource(self.path, self.columns, holdout=held)  # type: ignore[arg-type]
        assert self.array is not None
        mask = None if held is None else holdout_mask(len(self.array), *held)
        return ArraySource(self.array, mask)


def large_source(x: Any, cfg: Any, holdout: tuple[float, int] = (0.1, 0)) -> LargeInput | None:
    """``x`` as a :class:`LargeInput` when it is a Parquet path, or a memory-mapped array
    whose float32 rows exceed ``cfg``'s memory budget (or ``cfg.streaming`` is
    ``"always"``); else None (an array read into memory as usual)."""
    if isinstance(x, str | os.PathLike):
        path = str(x)
        try:
            schema = pq.read_schema(path)
        except (OSError, pa.ArrowException) as err:
            raise ValueError(
                f"X is the path {path!r}, but not of a readable Parquet file: {err}"
            ) from None
        bad = [
            f.name
            for f in schema
            if not (
                pa.types.is_integer(f.type)
                or pa.types.is_floating(f.type)
                or pa.types.is_boolean(f.type)
            )
        ]
        if bad:
            raise ValueError(
                f"{path} has non-numeric column(s) {bad[:5]}: fit takes a Parquet file of "
                "numeric feature columns only (select or encode them first)"
            )
        columns = tuple(schema.names)
        names = np.asarray(columns, dtype=object)
        return LargeInput(path, columns, None, len(columns), holdout, names)
    if isinstance(x, np.memmap) and x.ndim >= 2:
        width = int(np.prod(x.shape[1:]))
        if cfg.streams(source_bytes(len(x), width), available_memory()):
            return LargeInput(None, (), x, width, holdout)
    return None
