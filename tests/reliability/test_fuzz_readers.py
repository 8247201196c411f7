"""Fuzzed binary sources: IDX files, NPZ archives, PNG images and gzip streams with malformed
headers, lying declared sizes and bytes flipped anywhere. Each reader either returns rows of
the shape its header declared or refuses in one line (SourceReadError / ConfigError, or an
image set aside); never another exception, and never more than a bounded time and memory,
whatever the file claims (issue 47, deliverable 3)."""

from __future__ import annotations

import gzip
import io
import struct
import tempfile
import time
import tracemalloc
import zipfile
import zlib
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import ae_models.training.streaming  # noqa: F401  (the readers' memory check: imported before timing)
from tasks.config import ConfigError
from tasks.io import arrays
from tasks.io.arrays import SourceReadError

PEAK_BYTES = 128 << 20  # what one small file may make a reader allocate, whatever it claims
SECONDS = 5.0
DIMS = st.one_of(st.integers(0, 40), st.integers(2**15, 2**31 - 1))  # small, or a lie
IDX_TYPES = st.sampled_from([0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E, 0x07, 0xFF])


@st.composite
def idx_files(draw) -> tuple[str, bytes]:
    """An IDX file (maybe gzip): a header of 1-4 dimensions that may lie, a body of any length
    near what it declares, and maybe a flipped byte."""
    dims = draw(st.lists(DIMS, min_size=1, max_size=4))
    kind = draw(IDX_TYPES)
    header = struct.pack(">BBBB", 0, 0, kind, len(dims)) + struct.pack(f">{len(dims)}I", *dims)
    size = {0x08: 1, 0x09: 1, 0x0B: 2, 0x0C: 4, 0x0D: 4, 0x0E: 8}.get(kind, 1)
    declared = int(np.prod(dims, dtype=object)) * size
    body_len = draw(st.sampled_from([min(declared, 4096), 0, 7, 100]))
    data = header + bytes(draw(st.binary(min_size=0, max_size=64))) + bytes(body_len)
    data = _flip(draw, data)
    gz = draw(st.booleans())
    return ("data.idx.gz" if gz else "data.idx"), (gzip.compress(data) if gz else data)


@st.composite
def npz_files(draw) -> tuple[str, bytes]:
    """An NPZ archive of a small X (and maybe y) whose .npy header may be rewritten to claim
    another shape, and whose bytes may be flipped."""
    rows, cols = draw(st.integers(1, 6)), draw(st.integers(1, 5))
    buffer = io.BytesIO()
    arrays_in = {"X": np.arange(rows * cols, dtype=np.float32).reshape(rows, cols)}
    if draw(st.booleans()):
        arrays_in["y"] = np.zeros(draw(st.integers(0, 7)))
    np.savez(buffer, **arrays_in)
    data = buffer.getvalue()
    claim = draw(st.sampled_from(["", f"({2**31}, {cols})", f"({rows}, 99999999)", "(3,)"]))
    if claim:
        data = _rewrite_npy_shape(data, claim)
    return "data.npz", _flip(draw, data)


@st.composite
def png_files(draw) -> tuple[str, bytes]:
    """A PNG whose IHDR may declare any size (up to 2**31 a side) over a tiny image's data."""
    width, height = draw(DIMS), draw(DIMS)
    raw = b"".join(b"\x00" + bytes(min(width, 64)) for _ in range(min(height, 64)))
    ihdr = b"IHDR" + struct.pack(
        ">IIBBBBB", width, height, 8, draw(st.sampled_from([0, 2])), 0, 0, 0
    )
    idat = b"IDAT" + zlib.compress(raw)

    def chunk(body: bytes) -> bytes:
        return struct.pack(">I", len(body) - 4) + body + struct.pack(">I", zlib.crc32(body))

    data = b"\x89PNG\r\n\x1a\n" + chunk(ihdr) + chunk(idat) + chunk(b"IEND")
    return "img.png", _flip(draw, data)


def _flip(draw, data: bytes) -> bytes:
    """``data`` with maybe one byte replaced, anywhere."""
    if not data or not draw(st.booleans()):
        return data
    at = draw(st.integers(0, len(data) - 1))
    return data[:at] + bytes([draw(st.integers(0, 255))]) + data[at + 1 :]


def _rewrite_npy_shape(npz: bytes, shape: str) -> bytes:
    """The archive with X.npy's header claiming ``shape`` (the data left as it was)."""
    with zipfile.ZipFile(io.BytesIO(npz)) as zf:
        members = {name: zf.read(name) for name in zf.namelist()}
    body = members["X.npy"]
    start = body.index(b"'shape': (") + len(b"'shape': ")
    end = body.index(b")", start) + 1
    header = body[:start] + shape.encode() + body[end:]
    members["X.npy"] = header  # the header's padding no longer adds up: numpy says so
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        for name, member in members.items():
            zf.writestr(name, member)
    return out.getvalue()


def _read(name: str, content: bytes) -> str:
    """Read one file with its reader, timed and with numpy's and Python's allocations traced:
    'read' or 'refused'."""
    folder = Path(tempfile.mkdtemp(prefix="aepipe-fuzz-"))
    path = folder / name
    path.write_bytes(content)
    tracemalloc.start()
    started = time.monotonic()
    try:
        if name.endswith(".npz"):
            shape, _ = arrays.npz_x_shape(path)
            got = arrays.read_npz(path)
            assert got.features.shape == (shape[0], int(np.prod(shape[1:])))
        elif name.endswith(".png"):
            (folder / "a").mkdir()
            path.rename(folder / "a" / name)
            rel = arrays.list_images(folder)
            layout = arrays.probe_images(str(folder), rel, None, "auto")
            blocks = list(arrays.decode_image_blocks(str(folder), rel, layout, True, workers=1))
            rows = sum(len(b.ids) for b in blocks)
            if not rows:  # the image set aside, with its reason
                assert [b.quarantine for b in blocks if b.quarantine]
                return "refused"
        else:
            shape = arrays.idx_shape(path)
            assert arrays.read_idx(path).shape == shape
        return "read"
    except (SourceReadError, ConfigError) as err:
        assert "\n" not in str(err) and str(err)
        return "refused"
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        took = time.monotonic() - started
        for f in sorted(folder.rglob("*"), reverse=True):
            f.rmdir() if f.is_dir() else f.unlink()
        folder.rmdir()
        assert peak < PEAK_BYTES, f"{name}: {peak / 2**20:.0f} MB"
        assert took < SECONDS, f"{name}: {took:.1f} s"


FUZZ = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)


@FUZZ
@given(idx_files())
def test_any_idx_file_reads_or_is_refused_within_bounds(case: tuple[str, bytes]) -> None:
    event(_read(*case))


@FUZZ
@given(npz_files())
def test_any_npz_file_reads_or_is_refused_within_bounds(case: tuple[str, bytes]) -> None:
    event(_read(*case))


@FUZZ
@given(png_files())
def test_any_png_reads_or_is_set_aside_within_bounds(case: tuple[str, bytes]) -> None:
    event(_read(*case))
