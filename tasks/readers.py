"""Readers for array sources: IDX (as MNIST ships, gzip or raw) and NPZ."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

# IDX type codes -> NumPy big-endian dtypes
_IDX_TYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


class SourceReadError(ValueError):
    """A source file that cannot be read as what it claims to be; the message names it."""


def read_idx(path: str | Path) -> np.ndarray:
    """Array stored in an IDX file (``.gz`` or raw), with its shape from the header."""
    p = Path(path)
    opener = gzip.open if p.suffix == ".gz" else open
    try:
        with opener(p, "rb") as fh:
            data = fh.read()
    except (OSError, EOFError) as err:
        raise SourceReadError(f"cannot read IDX file {str(p)!r}: {err}") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise SourceReadError(f"{str(p)!r} is not an IDX file (bad magic number)")
    code, ndim = data[2], data[3]
    if code not in _IDX_TYPES:
        raise SourceReadError(f"{str(p)!r} has unknown IDX data type 0x{code:02x}")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise SourceReadError(f"{str(p)!r} is truncated inside its IDX header")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    dtype = _IDX_TYPES[code]
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(data) - header != expected:
        raise SourceReadError(
            f"{str(p)!r} holds {len(data) - header} data bytes, header says {expected} "
            f"(shape {shape}): truncated or corrupt"
        )
    array = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
    return array.astype(dtype.newbyteorder("="))


def load_mnist(folder: str | Path, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """MNIST images (N x 784, float32 in [0, 1]) and labels from the standard IDX files."""
    prefix = "train" if split == "train" else "t10k"
    root = Path(folder)
    images = read_idx(root / f"{prefix}-images-idx3-ubyte.gz")
    labels = read_idx(root / f"{prefix}-labels-idx1-ubyte.gz")
    x = images.reshape(len(images), -1).astype(np.float32) / 255.0
    return x, labels.astype(np.int64)
