"""Readers for array sources: image folders (PNG, JPEG, ...), IDX (as MNIST ships, gzip or
raw) and NPZ."""

from __future__ import annotations

import gzip
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ae_models.preprocessing.normalizer import PIXEL_SCALE

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


# values in one row of an image or array source, at most: 2**20 (1024 x 1024 gray, 591 x 591
# RGB). A model's first layer of 256 units holds 268M weights at it, the rows' column names
# about 70 MB; a header that declares more (a 16-byte IDX file claiming 30000 x 30000) is
# refused before anything is allocated for it. Larger images: source.image_size resizes them
MAX_ROW_VALUES = 2**20


def check_row_width(values: int, what: str) -> None:
    """Refuse a source whose rows would hold more than :data:`MAX_ROW_VALUES` values."""
    if values > MAX_ROW_VALUES:
        raise SourceReadError(
            f"{what} declares {values:,} values a row; aepipe takes at most "
            f"{MAX_ROW_VALUES:,} (1024 x 1024 pixels): resize the images first "
            "(source.image_size)"
        )


def _read_bytes(p: Path, limit: int = -1) -> bytes:
    opener = gzip.open if p.suffix == ".gz" else open
    try:
        with opener(p, "rb") as fh:
            return fh.read(limit)
    except (OSError, EOFError) as err:
        raise SourceReadError(f"cannot read IDX file {str(p)!r}: {err}") from None


def _parse_idx_header(data: bytes, p: Path) -> tuple[np.dtype, tuple[int, ...], int]:
    """Data type, shape and header length from the start of an IDX file."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise SourceReadError(f"{str(p)!r} is not an IDX file (bad magic number)")
    code, ndim = data[2], data[3]
    if code not in _IDX_TYPES:
        raise SourceReadError(f"{str(p)!r} has unknown IDX data type 0x{code:02x}")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise SourceReadError(f"{str(p)!r} is truncated inside its IDX header")
    return _IDX_TYPES[code], struct.unpack(f">{ndim}I", data[4:header]), header


def idx_shape(path: str | Path) -> tuple[int, ...]:
    """Shape an IDX file declares, read from its header alone (no data decompressed), checked
    against the file: an uncompressed file's size, a gzip file's recorded size (its ISIZE
    trailer, the decompressed size modulo 2**32), and the width of a row."""
    return _checked_idx_header(Path(path))[1]


def _checked_idx_header(p: Path) -> tuple[np.dtype, tuple[int, ...], int]:
    """:func:`_parse_idx_header` of ``p``'s header, checked as :func:`idx_shape` says."""
    dtype, shape, header = _parse_idx_header(_read_bytes(p, 4 + 4 * 255), p)
    values = int(np.prod(shape, dtype=object)) * dtype.itemsize
    declared = header + values
    if p.suffix == ".gz":
        with open(p, "rb") as fh:
            fh.seek(-4, os.SEEK_END)
            actual = struct.unpack("<I", fh.read(4))[0]
        declared %= 2**32
    else:
        actual = p.stat().st_size
    if actual != declared:
        raise SourceReadError(
            f"{str(p)!r} declares shape {shape} ({declared:,} bytes with its header) but "
            f"holds {actual:,}: truncated, corrupt or not what it claims"
        )
    check_row_width(int(np.prod(shape[1:], dtype=object)), f"{str(p)!r}")
    check_fits_memory(values, f"{str(p)!r}")
    return dtype, shape, header


def read_idx(path: str | Path) -> np.ndarray:
    """Array stored in an IDX file (``.gz`` or raw), with its shape from the header: the
    header is checked first (:func:`idx_shape`), and no more than it declares is read."""
    p = Path(path)
    dtype, shape, header = _checked_idx_header(p)
    expected = int(np.prod(shape)) * dtype.itemsize
    data = _read_bytes(p, header + expected + 1)  # one byte more tells a longer file
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
    x = images.reshape(len(images), -1).astype(np.float32) / PIXEL_SCALE
    return x, labels.astype(np.int64)


IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"})
GRAY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "F"})


@dataclass
class ArrayData:
    """Rows read from an array source (images, IDX, NPZ), and the rows set aside.

    ``features`` is rows x columns; ``ids`` are stable entity ids (relative file paths or row
    numbers); ``quarantine`` holds ``(location, reason)`` for every row that could not be read.
    ``scale`` is the fixed pixel scale for images (255), None for tables.
    """

    features: np.ndarray
    ids: list[str]
    labels: np.ndarray | None = None
    quarantine: list[tuple[str, str]] = field(default_factory=list)
    image_shape: tuple[int, int, int] | None = None
    scale: float | None = None
    columns: list[str] = field(default_factory=list)


def as_pixels(data: ArrayData) -> np.ndarray | None:
    """The rows of a fixed-scale source (images, IDX images, the digits) as a C-ordered
    ``uint8`` matrix, which the ingested file stores as one tensor column; None for arrays
    without a pixel scale or with values a byte cannot hold exactly (NPZ arrays, IDX files of
    other numbers), which keep a column per feature."""
    x = data.features
    if data.scale is None or x.ndim != 2:
        return None
    if x.dtype == np.uint8:
        return np.ascontiguousarray(x)
    if x.size and not (np.isfinite(x).all() if x.dtype.kind == "f" else True):
        return None
    if x.size and (x.min() < 0 or x.max() > 255 or (x.dtype.kind == "f" and (x % 1).any())):
        return None
    return np.ascontiguousarray(x, dtype=np.uint8)


def pixel_columns(shape: tuple[int, int, int]) -> list[str]:
    """Column names of flattened H x W x C pixels: ``pixel_0`` ... ``pixel_{HWC-1}`` (an
    image wider than :data:`MAX_ROW_VALUES` refused first)."""
    check_row_width(shape[0] * shape[1] * shape[2], f"an image of {shape[0]} x {shape[1]}")
    return [f"pixel_{i}" for i in range(shape[0] * shape[1] * shape[2])]


def list_images(root: str | Path) -> list[str]:
    """Image files under ``root`` (recursively) as ``/``-separated paths relative to it, in a
    stable order (plain strings: on 70,000 files pathlib objects cost more than decoding)."""
    base = os.fspath(root)
    found = []
    for folder, _, names in os.walk(base):
        rel = os.path.relpath(folder, base)
        prefix = "" if rel == "." else rel.replace(os.sep, "/") + "/"
        found += [prefix + n for n in names if os.path.splitext(n)[1].lower() in IMAGE_SUFFIXES]
    return sorted(found)


def read_file(path: str) -> bytes:
    """A whole file's bytes, through the OS's calls directly: Python's buffered file objects
    cost more than decoding a small image."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
    try:
        data = os.read(fd, _FIRST_READ)
        if len(data) == _FIRST_READ:  # a big file: read on to its end
            blocks = [data]
            while block := os.read(fd, 1 << 20):
                blocks.append(block)
            data = b"".join(blocks)
    finally:
        os.close(fd)
    return data


_FIRST_READ = 1 << 16  # most images fit; a bigger first buffer costs its allocation each time
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_COLOR_TYPE = {"L": 0, "RGB": 2}  # 8-bit grayscale, 8-bit truecolor


def _plain_png_header(mode: str, size: tuple[int, int]) -> bytes:
    """Bytes 12-25 of a PNG that libspng decodes to exactly what PIL's ``mode`` conversion
    gives, at ``size``: its IHDR chunk with that width and height, 8-bit samples, and the
    colour type of ``mode`` (no palette, alpha or 16-bit conversion to do)."""
    height, width = size
    return b"IHDR" + struct.pack(">IIBB", width, height, 8, _PNG_COLOR_TYPE[mode])


def _decode_pil(data: bytes, mode: str, size: tuple[int, int] | None) -> np.ndarray:
    import io

    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        img.load()
        converted = img if img.mode == mode else img.convert(mode)
    if size is not None and converted.size != (size[1], size[0]):
        converted = converted.resize((size[1], size[0]), Image.Resampling.BILINEAR)
    return np.asarray(converted, dtype=np.uint8)


def _decode_share(
    base: str, rel: list[str], job: tuple[str, tuple[int, int], bool], out: np.ndarray
) -> dict[int, str]:
    """Decode a share of images (paths ``rel`` under ``base``) into the rows of ``out``, a
    row each; returns why each row that could not be decoded is unusable (it stays zero).

    Plain 8-bit PNGs go through libspng (imagecodecs), faster than PIL on small images
    and bit-identical (PNG is lossless); any other file, a PNG that needs converting or
    resizing, and one libspng refuses go through PIL, whose error names what is wrong."""
    from imagecodecs import spng_decode
    from PIL import Image, UnidentifiedImageError

    mode, size, resize = job
    size = (int(size[0]), int(size[1]))
    plain = _plain_png_header(mode, size)
    shape = size if mode == "L" else (*size, 3)
    prefix = os.path.join(base, "")
    bad: dict[int, str] = {}
    for i, r in enumerate(rel):
        try:
            data = read_file(prefix + r)
            if data[12:26] == plain and data[:8] == _PNG_SIGNATURE:
                try:
                    spng_decode(data, out=out[i].reshape(shape))  # straight into its row
                    continue
                except (RuntimeError, ValueError):  # corrupt: PIL decodes it again to say why
                    out[i] = 0
            arr = _decode_pil(data, mode, size if resize else None)
        except UnidentifiedImageError:  # its message names the in-memory buffer, not the file
            bad[i] = "cannot decode image: not an image format PIL reads, or corrupt"
            continue
        except Image.DecompressionBombError as err:  # no OSError: it failed the whole source
            bad[i] = f"image too large to decode: {err}".splitlines()[0]
            continue
        except (OSError, ValueError) as err:
            bad[i] = f"cannot decode image: {type(err).__name__}: {err}".splitlines()[0]
            continue
        if arr.shape[:2] != size:
            bad[i] = (
                f"image is {arr.shape[1]}x{arr.shape[0]}, expected {size[1]}x{size[0]}; "
                "set source.image_size to resize"
            )
        else:
            out[i] = arr.reshape(-1)
    return bad


# The matrix a pool's forked workers decode into, by a token per call: shared memory mapped
# before they fork, so no row is pickled back.
_SHARED_OUT: dict[str, np.ndarray] = {}


def _decode_shared_share(
    token: str, start: int, base: str, rel: list[str], job: tuple[str, tuple[int, int], bool]
) -> dict[int, str]:
    """In a forked worker: decode a share into rows ``start...`` of the shared matrix."""
    out = _SHARED_OUT[token]
    return _decode_share(base, rel, job, out[start : start + len(rel)])


# Below this many images a partition decodes in its own thread: starting processes costs more.
PROCESS_DECODE_MIN = 2_000


def _decode_pool(n_files: int, workers: int | None):
    """A pool of forked decoder processes for a big partition, or None to decode in this
    thread. Threads do not help: the per-image Python work (reading the file, bookkeeping)
    holds the GIL, and two threads decoded MNIST PNGs no faster than one here, two processes
    1.8x faster. Fork (Linux) starts workers without re-importing the user's script, as
    spawn would; a daemon process (a Dask worker, say) cannot have children, so it decodes
    in its thread."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    n = workers if workers is not None else min(8, len(os.sched_getaffinity(0)))
    if (
        n < 2
        or n_files < PROCESS_DECODE_MIN
        or "fork" not in mp.get_all_start_methods()
        or mp.current_process().daemon
    ):
        return None, 1
    return ProcessPoolExecutor(n, mp_context=mp.get_context("fork")), n


@dataclass(frozen=True)
class ImageLayout:
    """What every image of a folder is decoded to: PIL mode, (height, width), and whether
    images of another size are resized (``source.image_size`` given) or quarantined."""

    mode: str
    size: tuple[int, int]
    resize: bool

    @property
    def shape(self) -> tuple[int, int, int]:
        """Height, width and channels of a decoded image."""
        return (int(self.size[0]), int(self.size[1]), 1 if self.mode == "L" else 3)


def probe_images(
    base: str, rel: list[str], image_size: tuple[int, int] | None, mode: str
) -> ImageLayout:
    """The layout every image is decoded to, fixed by the first readable image (its mode when
    ``mode`` is ``auto``, its size unless ``image_size`` is given)."""
    from PIL import Image, UnidentifiedImageError

    if not rel:
        raise SourceReadError(
            f"no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) under {base!r}"
        )
    for r in rel:
        try:
            with Image.open(os.path.join(base, r)) as probe:
                probe_mode, (w, h) = probe.mode, probe.size
            break
        except (UnidentifiedImageError, OSError, Image.DecompressionBombError):
            continue  # (decoding quarantines it with the reason)
    else:
        raise SourceReadError(f"none of the {len(rel)} image files under {base!r} can be decoded")
    if mode == "auto":
        mode = "L" if probe_mode in GRAY_MODES else "RGB"
    size = tuple(image_size) if image_size is not None else (h, w)
    return ImageLayout(mode, size, image_size is not None)


def decode_image_blocks(
    base: str,
    rel: list[str],
    layout: ImageLayout,
    labelled: bool,
    workers: int | None = None,
) -> Iterator[ArrayData]:
    """Decode the images ``rel`` (paths relative to ``base``), in forked processes when there
    are many, as blocks of rows in source order: each block is handed on as soon as it and
    every block before it are decoded, so the caller writes while the rest decode. The
    first path part is the label when ``labelled``; undecodable or mis-sized images are
    quarantined (in the block's ``quarantine``, in source order)."""
    import mmap
    import uuid

    job = (layout.mode, layout.size, layout.resize)
    shape = (len(rel), int(np.prod(layout.shape)))
    # anonymous shared memory, zero-filled, mapped before any worker forks
    matrix = np.frombuffer(mmap.mmap(-1, max(1, shape[0] * shape[1])), np.uint8)
    matrix = matrix[: shape[0] * shape[1]].reshape(shape)

    def block(start: int, stop: int, bad: dict[int, str]) -> ArrayData:
        names = rel[start:stop]
        rows = matrix[start:stop]
        quarantine = [(names[i], bad[i]) for i in sorted(bad)]
        if bad:
            keep = np.ones(len(names), bool)
            keep[list(bad)] = False
            rows = rows[keep]
            names = [r for r, k in zip(names, keep, strict=True) if k]
        labels = np.array([r.split("/", 1)[0] for r in names]) if labelled else None
        return ArrayData(
            rows, names, labels, quarantine, layout.shape, PIXEL_SCALE, pixel_columns(layout.shape)
        )

    # imported before any worker forks, so each inherits the modules instead of loading them
    import imagecodecs  # noqa: F401
    import PIL.Image  # noqa: F401

    token = uuid.uuid4().hex
    _SHARED_OUT[token] = matrix
    try:
        pool, n = _decode_pool(len(rel), workers)
        if pool is None:
            yield block(0, len(rel), _decode_share(base, rel, job, matrix))
            return
        # contiguous shares, a few per process: a future per image costs more than decoding,
        # and one share per process would leave nothing to write while the last ones decode
        step = -(-len(rel) // (4 * n))
        with pool:
            futures = [
                (i, pool.submit(_decode_shared_share, token, i, base, rel[i : i + step], job))
                for i in range(0, len(rel), step)
            ]
            try:
                for start, future in futures:
                    yield block(start, min(start + step, len(rel)), future.result())
            finally:  # the caller stopped early, or a share failed: drop what is queued
                for _, future in futures:
                    future.cancel()
    finally:
        del _SHARED_OUT[token]


def read_idx_source(path: str | Path, labels_path: str | Path | None = None) -> ArrayData:
    """Images (or a matrix) from an IDX file, with labels from a sibling labels file.

    Without ``labels_path`` a MNIST-style sibling (``*-images-idx3-*`` ->
    ``*-labels-idx1-*``) is used when it exists.
    """
    p = Path(path)
    data = read_idx(p)
    labels_path = idx_labels_path(p, labels_path)
    labels = read_idx(labels_path) if labels_path is not None else None
    if labels is not None and len(labels) != len(data):
        raise SourceReadError(
            f"{str(labels_path)!r} holds {len(labels)} labels for {len(data)} rows in {str(p)!r}"
        )
    shape, scale, columns = idx_layout(data.shape)
    return ArrayData(
        data.reshape(len(data), -1),
        [str(i) for i in range(len(data))],
        labels,
        [],
        shape,
        scale,
        columns,
    )


def idx_labels_path(path: Path, labels_path: str | Path | None) -> Path | None:
    """The labels file for an IDX images file: the one given, or a MNIST-style sibling
    (``*-images-idx3-*`` -> ``*-labels-idx1-*``) when it exists."""
    if labels_path is not None:
        return Path(labels_path)
    if "images-idx3" in path.name:
        sibling = path.with_name(path.name.replace("images-idx3", "labels-idx1"))
        return sibling if sibling.exists() else None
    return None


def idx_layout(
    shape: tuple[int, ...],
) -> tuple[tuple[int, int, int] | None, float | None, list[str]]:
    """Image shape, pixel scale and column names for an IDX array of ``shape``."""
    if len(shape) >= 3:
        image = (shape[1], shape[2], shape[3] if len(shape) == 4 else 1)
        return image, PIXEL_SCALE, pixel_columns(image)
    return None, None, [f"x_{i}" for i in range(shape[1] if len(shape) == 2 else 1)]


def check_fits_memory(nbytes: int, what: str) -> None:
    """Refuse an array source whose values would take more than half the memory available
    now: it is read whole, and a few declared bytes (a header, a zip entry) can claim any
    size."""
    from ae_models.training.streaming import available_memory

    room = available_memory()
    if nbytes > room // 2:
        raise SourceReadError(
            f"{what} declares {nbytes / 2**30:.1f} GiB of values; this machine has "
            f"{room / 2**30:.1f} GiB available and array sources are read whole: split it, "
            "or convert it to Parquet, which is read in parts"
        )


def _npz_headers(p: Path) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Shape and dtype of each array in an NPZ file, from its headers alone, each checked:
    its zip entry's size is what the header declares, and all of them fit in memory."""
    import zipfile

    headers: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
    declared = 0
    try:
        with zipfile.ZipFile(p) as zf:
            for info in zf.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                with zf.open(info) as fh:
                    version = np.lib.format.read_magic(fh)
                    read_header = (
                        np.lib.format.read_array_header_1_0
                        if version == (1, 0)
                        else np.lib.format.read_array_header_2_0
                    )
                    shape, _, dtype = read_header(fh)
                    start = fh.tell()
                if dtype.hasobject:
                    raise SourceReadError(f"{str(p)!r}: array {info.filename!r} holds objects")
                size = int(np.prod(shape, dtype=object)) * dtype.itemsize
                if start + size != info.file_size:
                    raise SourceReadError(
                        f"{str(p)!r}: array {info.filename!r} declares shape {tuple(shape)} "
                        f"({size:,} bytes) but its entry holds {info.file_size - start:,}: "
                        "corrupt or not what it claims"
                    )
                declared += size
                headers[info.filename.removesuffix(".npy")] = (tuple(shape), dtype)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        if isinstance(err, SourceReadError):
            raise
        raise SourceReadError(f"cannot read NPZ file {str(p)!r}: {err}") from None
    if "X" not in headers:
        raise SourceReadError(f"{str(p)!r} has no array 'X' (arrays: {sorted(headers)})")
    check_row_width(int(np.prod(headers["X"][0][1:], dtype=object)), f"{str(p)!r}")
    check_fits_memory(declared, f"{str(p)!r}")
    return headers


def npz_x_shape(path: str | Path) -> tuple[tuple[int, ...], bool]:
    """Shape of ``X`` in an NPZ file and whether it has ``y``, from the array headers alone."""
    headers = _npz_headers(Path(path))
    return headers["X"][0], "y" in headers


def read_npz(path: str | Path) -> ArrayData:
    """Rows of the array ``X`` in an NPZ file, with ``y`` as the label when present; the
    headers are checked first (:func:`_npz_headers`), so nothing larger than they declare,
    or than memory holds, is allocated."""
    p = Path(path)
    headers = _npz_headers(p)
    try:
        with np.load(p, allow_pickle=False) as npz:
            x = np.asarray(npz["X"])
            y = np.asarray(npz["y"]) if "y" in headers else None
    except (OSError, ValueError, EOFError) as err:
        raise SourceReadError(f"cannot read NPZ file {str(p)!r}: {err}") from None
    if x.ndim < 2:
        raise SourceReadError(f"'X' in {str(p)!r} must have rows and columns, shape {x.shape}")
    if y is not None and len(y) != len(x):
        raise SourceReadError(f"{str(p)!r}: 'y' has {len(y)} rows, 'X' has {len(x)}")
    columns = [f"x_{i}" for i in range(int(np.prod(x.shape[1:])))]
    return ArrayData(
        x.reshape(len(x), -1),
        [str(i) for i in range(len(x))],
        y.reshape(len(y)) if y is not None else None,
        [],
        None,
        None,
        columns,
    )
