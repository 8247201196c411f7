"""Training rows that need not fit in memory: row blocks read from Parquet or a memory-mapped
array in a shuffled order, shuffled again in a bounded buffer, read ahead on a thread.

The training loop (:func:`~ae_models.training.loop.train`) takes its rows as a :class:`Rows`: an
in-memory tensor (:class:`InMemoryRows`, the fast path) or a :class:`StreamingRows` over the
blocks of a source:

- a :class:`ParquetSource` names feature columns of a Parquet file (or its one tensor
  column, :mod:`ae_models.preprocessing.tensor_column`) and, optionally, the rows to keep
  (``where=("split", "train")``); its blocks are the file's row groups;
- an :class:`ArraySource` wraps an array (``np.memmap``, ``np.load(mmap_mode="r")``) and a
  row mask; its blocks are runs of :data:`ARRAY_BLOCK_ROWS` rows.

Each epoch visits every block once in an order drawn from ``(seed, epoch, rank)`` alone, so a
resumed run streams exactly the batches the uninterrupted run would have; blocks gather in a
buffer of about ``shuffle_rows`` rows that is permuted before it is cut into batches (rows of
one block spread over the batches of a buffer, not only of their block). Memory stays at
about the buffer, :data:`READ_AHEAD` blocks and the Parquet footer, whatever the number of
rows. The first read of a block decodes it and keeps its float32 rows in an unlinked
temporary file beside the source (when that disk has room); later epochs copy them back
from there instead of decoding the Parquet columns again.

A data-parallel rank opens its own shard (``rank``, ``world``): every ``world``-th block, or,
when the source has too few blocks to share, every block's ``rank``-th slice.

A source file that changes while it is read (its size or modification time differ from when
training opened it) stops training with :class:`SourceChanged`, rather than mixing rows of
two versions.
"""

from __future__ import annotations

import os
import queue
import shutil
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from torch import Tensor

from ae_models.preprocessing.tensor_column import find_tensor, tensor_floats

SHUFFLE_ROWS = 65_536  # rows permuted together in the streaming buffer, by default
READ_AHEAD = 2  # blocks read ahead of the one being trained on
ARRAY_BLOCK_ROWS = 8_192  # rows of a memory-mapped array read as one block


class SourceChanged(RuntimeError):
    """The file training streams from changed while training read it."""


class Rows(Protocol):
    """Training rows as the loop reads them: their count, width, an epoch's shuffled batches
    and the batches in order (for validation and scoring)."""

    rows: int
    width: int

    def epoch_batches(
        self, epoch: int, batch_size: int, generator: torch.Generator | None
    ) -> Iterator[Tensor]: ...

    def ordered_batches(self, batch_size: int) -> Iterator[Tensor]: ...


def is_rows(x: Any) -> bool:
    """Whether ``x`` is :class:`Rows` (rather than an array or a tensor)."""
    return hasattr(x, "epoch_batches") and hasattr(x, "ordered_batches")


GATHER_ROWS = 16384  # rows shuffled into a contiguous block at a time


class InMemoryRows:
    """Rows resident as one float32 tensor: each epoch a permutation, gathered in contiguous
    chunks so batches are plain slices. With a ``generator`` the permutation comes from its
    (checkpointed) state; without one from ``(seed, epoch, rank)`` alone."""

    def __init__(self, x: Tensor, seed: int = 0, rank: int = 0) -> None:
        self.x, self.seed, self.rank = x, seed, rank
        self.rows = len(x)
        self.width = int(np.prod(x.shape[1:])) if x.ndim > 1 else 1

    def epoch_batches(
        self, epoch: int, batch_size: int, generator: torch.Generator | None
    ) -> Iterator[Tensor]:
        """Shuffled batches of one epoch."""
        if generator is None:
            generator = torch.Generator().manual_seed(_epoch_seed(self.seed, epoch, self.rank))
        order = torch.randperm(len(self.x), generator=generator)
        chunk = max(GATHER_ROWS // batch_size, 1) * batch_size
        for start in range(0, len(self.x), chunk):
            block = self.x[order[start : start + chunk]]
            for b in range(0, len(block), batch_size):
                yield block[b : b + batch_size]

    def ordered_batches(self, batch_size: int) -> Iterator[Tensor]:
        """The rows in order, ``batch_size`` at a time."""
        for start in range(0, len(self.x), batch_size):
            yield self.x[start : start + batch_size]


def _epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """One 63-bit seed per (seed, epoch, rank): the order of an epoch depends on nothing else."""
    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(2, np.uint64)[0] >> 1)


@dataclass(frozen=True)
class Block:
    """One unit of reading: row group (or array block) ``group``, slice ``part`` of ``parts``."""

    group: int
    part: int = 0
    parts: int = 1


class BlockReader(Protocol):
    """Reads the selected rows of one block of a source as a float32 matrix."""

    width: int

    def blocks(self) -> list[tuple[Block, int]]: ...

    def read(self, block: Block) -> np.ndarray: ...


class _Blocks:
    """What a source's readers share: the row mask, the row offset of each group, the file's
    identity when opened, and the sharding of blocks between ranks."""

    def __init__(self, sizes: list[int], mask: np.ndarray | None, path: str | None) -> None:
        self.sizes = sizes
        self.offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self.mask = mask
        self.path = path
        self.stamp = _stamp(path) if path else None

    def check(self) -> None:
        """Raise SourceChanged when the file is not the one training opened."""
        if self.path is not None and _stamp(self.path) != self.stamp:
            raise SourceChanged(
                f"the training data {self.path} changed while training read it (its size or "
                "modification time differ from when training started); training stopped "
                "rather than mix rows of two versions: run it again to train on the new file"
            )

    def bounds(self, block: Block) -> tuple[int, int]:
        """Row range ``[start, stop)`` of ``block`` within its group."""
        n = self.sizes[block.group]
        return n * block.part // block.parts, n * (block.part + 1) // block.parts

    def keep(self, block: Block) -> np.ndarray | None:
        """The block's rows to keep (None: all)."""
        if self.mask is None:
            return None
        start, stop = self.bounds(block)
        base = int(self.offsets[block.group])
        return self.mask[base + start : base + stop]

    def shard(self, rank: int, world: int) -> list[tuple[Block, int]]:
        """This rank's blocks and how many selected rows each holds."""
        groups = len(self.sizes)
        if world > 1 and groups < 2 * world:  # too few groups to deal out: slice each
            blocks = [Block(g, rank, world) for g in range(groups)]
        else:
            blocks = [Block(g) for g in range(rank, groups, world)]
        out = []
        for b in blocks:
            keep = self.keep(b)
            start, stop = self.bounds(b)
            out.append((b, int(keep.sum()) if keep is not None else stop - start))
        return [(b, n) for b, n in out if n]


def _equals(column: pa.ChunkedArray, value: str) -> np.ndarray:
    """Where ``column`` (plain or dictionary-encoded) equals ``value``, as a bool array."""
    if pa.types.is_dictionary(column.type):
        column = column.cast(column.type.value_type)
    hits = pc.equal(column, value).fill_null(False)
    return np.asarray(hits.to_numpy(zero_copy_only=False), dtype=bool)


def holdout_mask(rows: int, share: float, seed: int, inside: bool) -> np.ndarray:
    """A seeded random ``share`` of ``rows`` (``inside``) or the rest, as a row mask."""
    drawn = np.random.default_rng(seed).random(rows) < share
    return drawn if inside else ~drawn


def _stamp(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns


@dataclass(frozen=True)
class ParquetSource:
    """Feature columns of a Parquet file as training rows (picklable: a data-parallel rank
    opens it itself). ``where=(column, value)`` keeps the rows whose ``column`` equals
    ``value`` (the pipeline's ``("split", "train")``); ``holdout=(share, seed, inside)`` keeps
    a seeded random ``share`` of the rows (``inside``) or the rest (the estimator's
    validation rows)."""

    path: str
    columns: tuple[str, ...]
    where: tuple[str, str] | None = None
    holdout: tuple[float, int, bool] | None = None  # (share, seed, inside): a random part

    def reader(self, rank: int = 0, world: int = 1) -> ParquetReader:
        """A reader of this rank's shard."""
        return ParquetReader(self, rank, world)

    def open(
        self,
        *,
        streaming: bool,
        seed: int = 0,
        rank: int = 0,
        world: int = 1,
        shuffle_rows: int = SHUFFLE_ROWS,
    ) -> Rows:
        """This rank's rows: streamed, or read into memory once."""
        return open_rows(self.reader(rank, world), streaming, seed, rank, shuffle_rows)


class ParquetReader:
    """Reads the blocks (row groups, or slices of them) of one rank's shard of a
    :class:`ParquetSource`, as float32 matrices of the selected rows."""

    def __init__(self, source: ParquetSource, rank: int = 0, world: int = 1) -> None:
        self.source = source
        pf = pq.ParquetFile(source.path)
        meta = self._meta = pf.metadata  # parsed once: 784 columns x 56 groups take 50 MB
        missing = [c for c in source.columns if c not in pf.schema_arrow.names]
        if missing:
            raise ValueError(f"{source.path} lacks the feature column(s) {missing[:5]}")
        # one tensor column (aepipe's own files): its rows are the feature matrix
        self._tensor = find_tensor(pf.schema_arrow, source.columns[0]) if source.columns else None
        if self._tensor is not None and len(source.columns) > 1:
            raise ValueError(f"{source.path}: a tensor column is the whole feature matrix")
        sizes = [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]
        mask = None
        if source.where is not None:
            column, value = source.where
            mask = np.concatenate(  # a row group at a time: never the whole column at once
                [
                    _equals(pf.read_row_group(g, columns=[column]).column(column), value)
                    for g in range(meta.num_row_groups)
                ]
                or [np.zeros(0, bool)]
            )
        if source.holdout is not None:
            mask = holdout_mask(meta.num_rows, *source.holdout) & (True if mask is None else mask)
        self.width = self._tensor.width if self._tensor else len(source.columns)
        self._blocks = _Blocks(sizes, mask, source.path)
        self._shard = self._blocks.shard(rank, world)
        self.spill_dir: str | None = os.path.dirname(os.path.abspath(source.path))

    def blocks(self) -> list[tuple[Block, int]]:
        """This shard's blocks with their selected row counts."""
        return self._shard

    def handle(self) -> pq.ParquetFile:
        """The file opened for reading, after checking it is the one training opened."""
        self._blocks.check()
        return pq.ParquetFile(self.source.path, metadata=self._meta)

    def read(self, block: Block, pf: pq.ParquetFile | None = None) -> np.ndarray:
        """The selected rows of ``block`` (rows x columns, float32)."""
        self._blocks.check()
        pf = pf or self.handle()
        table = pf.read_row_group(block.group, columns=list(self.source.columns))
        start, stop = self._blocks.bounds(block)
        if block.parts > 1:
            table = table.slice(start, stop - start)
        keep = self._blocks.keep(block)
        if self._tensor is not None:
            values = tensor_floats(table.column(0), self._tensor)
            if keep is not None:
                return values[keep]
            return values if values.flags.writeable else values.copy()  # not Arrow's buffer
        rows = table.num_rows if keep is None else int(keep.sum())
        out = np.empty((rows, self.width), np.float32)
        for j, column in enumerate(table.columns):
            values = column.to_numpy()
            out[:, j] = values if keep is None else values[keep]
        return out


@dataclass
class ArraySource:
    """Rows of an array that may be memory-mapped (``np.memmap``, ``np.load(mmap_mode="r")``),
    optionally only those where ``mask`` is true, read in blocks of ``block_rows``."""

    array: np.ndarray
    mask: np.ndarray | None = None
    block_rows: int = ARRAY_BLOCK_ROWS

    def reader(self) -> ArrayReader:
        """A reader of the selected rows."""
        return ArrayReader(self)

    def open(self, *, streaming: bool, seed: int = 0, shuffle_rows: int = SHUFFLE_ROWS) -> Rows:
        """The selected rows: streamed, or copied into memory once."""
        return open_rows(self.reader(), streaming, seed, 0, shuffle_rows)


class ArrayReader:
    """Reads blocks of an :class:`ArraySource` as float32 matrices of the selected rows."""

    def __init__(self, source: ArraySource) -> None:
        self.source = source
        n = len(source.array)
        sizes = [min(source.block_rows, n - s) for s in range(0, n, source.block_rows)]
        self.width = int(np.prod(source.array.shape[1:]))
        self._blocks = _Blocks(sizes, source.mask, None)
        self._shard = self._blocks.shard(0, 1)
        filename = getattr(source.array, "filename", None)  # a memory map's file
        self.spill_dir: str | None = os.path.dirname(filename) if filename else None

    def blocks(self) -> list[tuple[Block, int]]:
        """The blocks with their selected row counts."""
        return self._shard

    def read(self, block: Block, pf: Any = None) -> np.ndarray:
        """The selected rows of ``block`` (rows x width, float32)."""
        base = int(self._blocks.offsets[block.group])
        start, stop = self._blocks.bounds(block)
        rows = np.array(self.source.array[base + start : base + stop], np.float32)  # a copy
        rows = rows.reshape(len(rows), self.width)
        keep = self._blocks.keep(block)
        return rows if keep is None else rows[keep]


def open_rows(
    reader: BlockReader, streaming: bool, seed: int, rank: int, shuffle_rows: int
) -> Rows:
    """``reader``'s rows as the training loop takes them: streamed, or read once into one
    tensor (rows of a block in file order, blocks in order)."""
    if streaming:
        return StreamingRows(reader, seed, rank, shuffle_rows)
    x = np.empty((rows_of(reader), reader.width), np.float32)  # filled in place: never the
    at = 0  # blocks and their concatenation at once
    for rows in read_in_order(reader):
        x[at : at + len(rows)] = rows
        at += len(rows)
    return InMemoryRows(torch.from_numpy(x), seed, rank)


class StreamingRows:
    """Rows read block by block each epoch: blocks in a shuffled order, permuted again in a
    buffer of about ``shuffle_rows`` rows, read ahead on a background thread."""

    def __init__(
        self, reader: BlockReader, seed: int = 0, rank: int = 0, shuffle_rows: int = SHUFFLE_ROWS
    ) -> None:
        self.seed, self.rank = seed, rank
        self.shuffle_rows = max(1, shuffle_rows)
        self.blocks = reader.blocks()
        self.rows = rows_of(reader)
        self.width = reader.width
        self.reader: BlockReader = _Spill.over(reader, source_bytes(self.rows, self.width))

    def epoch_batches(
        self, epoch: int, batch_size: int, generator: torch.Generator | None = None
    ) -> Iterator[Tensor]:
        """One epoch's batches; the order depends on ``(seed, epoch, rank)`` alone (the
        ``generator`` of in-memory rows is not used)."""
        rng = np.random.default_rng(_epoch_seed(self.seed, epoch, self.rank))
        order = [self.blocks[i][0] for i in rng.permutation(len(self.blocks))]
        # one buffer for the epoch, filled block by block; batches are gathered from it by a
        # permutation (no shuffled copy of the whole buffer), the rows left over move to its
        # front for the next fill
        largest = max((n for _, n in self.blocks), default=0)
        room = max(self.shuffle_rows, batch_size) + largest  # what is held never exceeds it
        buffer = np.empty((room, self.width), np.float32)
        held = 0
        for block in read_ahead(self.reader, order):
            buffer[held : held + len(block)] = block
            held += len(block)
            if held < self.shuffle_rows:
                continue
            perm = rng.permutation(held)
            full = held // batch_size * batch_size
            for start in range(0, full, batch_size):
                yield torch.from_numpy(buffer[perm[start : start + batch_size]])
            rest = buffer[perm[full:]]
            buffer[: len(rest)] = rest
            held = len(rest)
        if held:
            perm = rng.permutation(held)
            for start in range(0, held, batch_size):
                yield torch.from_numpy(buffer[perm[start : start + batch_size]])

    def ordered_batches(self, batch_size: int) -> Iterator[Tensor]:
        """The rows in source order, ``batch_size`` at a time."""
        rest = np.zeros((0, self.width), np.float32)
        for block in read_in_order(self.reader):
            rows = np.concatenate([rest, block]) if len(rest) else block
            full = len(rows) // batch_size * batch_size
            for start in range(0, full, batch_size):
                yield torch.from_numpy(rows[start : start + batch_size])
            rest = rows[full:]
        if len(rest):
            yield torch.from_numpy(rest)


class _Spill:
    """A block reader that decodes each block once: the first read of a block stores its
    float32 rows in an unlinked temporary file beside the source, later reads copy them back
    (the page cache keeps them if it can; they never count as this process's memory). Every
    epoch after the first then costs a copy a block instead of decoding hundreds of Parquet
    columns. The source is still checked for changes whenever an epoch opens it."""

    def __init__(self, reader: BlockReader, folder: str) -> None:
        self.reader, self.width = reader, reader.width
        # lives as long as the rows: closed (and so deleted) when they are collected
        self.file = tempfile.TemporaryFile(dir=folder, prefix=".aepipe-spill-")  # noqa: SIM115
        self.index: dict[Block, tuple[int, int]] = {}
        self.end = 0

    @classmethod
    def over(cls, reader: BlockReader, size: int) -> BlockReader:
        """``reader`` spilled where its folder has room for ``size`` bytes twice over (and
        1 GiB more); ``reader`` itself otherwise."""
        folder = getattr(reader, "spill_dir", None)
        if not folder:
            return reader
        try:
            free = shutil.disk_usage(folder).free
            if free < 2 * size + (1 << 30):
                return reader
            return cls(reader, folder)
        except OSError:  # read-only or gone: decode every epoch
            return reader

    def blocks(self) -> list[tuple[Block, int]]:
        """The blocks of the reader spilled."""
        return self.reader.blocks()

    def handle(self) -> Any:
        """The source opened (and checked) as the reader opens it, if it does."""
        opener = getattr(self.reader, "handle", None)
        return opener() if opener is not None else None

    def read(self, block: Block, pf: Any = None) -> np.ndarray:
        """The rows of ``block``: from the spill file after the first time."""
        hit = self.index.get(block)
        fd = self.file.fileno()
        if hit is not None:
            offset, rows = hit
            out = np.empty((rows, self.width), np.float32)
            view, done = memoryview(out).cast("B"), 0
            while done < len(view):
                done += os.preadv(fd, [view[done:]], offset + done)
            return out
        rows = np.ascontiguousarray(self.reader.read(block, pf))
        view, done = memoryview(rows).cast("B"), 0
        while done < len(view):
            done += os.pwrite(fd, view[done:], self.end + done)
        self.index[block] = (self.end, len(rows))
        self.end += len(view)
        return rows


_END = object()


def read_ahead(reader: BlockReader, order: list[Block], depth: int = READ_AHEAD) -> Iterator[Any]:
    """The blocks of ``order`` read by a background thread, at most ``depth`` ahead of the
    consumer; an error in the thread is raised in the consumer, and a consumer that stops
    early stops the thread."""
    out: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def run() -> None:
        try:
            opener = getattr(reader, "handle", None)  # a Parquet file, checked, opened once
            pf = opener() if opener is not None else None
            for block in order:
                if stop.is_set():
                    return
                _put(out, reader.read(block, pf), stop)
        except BaseException as err:  # handed to the consumer
            _put(out, err, stop)
            return
        _put(out, _END, stop)

    thread = threading.Thread(target=run, name="aepipe-read-ahead", daemon=True)
    thread.start()
    try:
        while (item := out.get()) is not _END:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join()


def read_in_order(reader: BlockReader) -> Iterator[np.ndarray]:
    """``reader``'s blocks in source order, read ahead."""
    return read_ahead(reader, [b for b, _ in reader.blocks()])


def _put(out: queue.Queue[Any], item: Any, stop: threading.Event) -> None:
    """Put ``item`` unless the consumer stopped (never blocks forever)."""
    while not stop.is_set():
        try:
            out.put(item, timeout=0.1)
            return
        except queue.Full:
            continue


def sample_mask(total: int, max_rows: int, seed: int = 0) -> np.ndarray:
    """A uniform choice of at most ``max_rows`` of ``total`` rows, as a mask."""
    take = np.ones(total, bool)
    if total > max_rows:
        take[:] = False
        take[np.random.default_rng(seed).choice(total, max_rows, replace=False)] = True
    return take


def sample_rows(reader: BlockReader, take: np.ndarray) -> np.ndarray:
    """The rows of ``reader`` that ``take`` (a mask over them, in source order) keeps, read
    in one pass: a bounded sample of data that need not fit in memory."""
    parts, offset = [], 0
    for rows in read_in_order(reader):
        parts.append(rows[take[offset : offset + len(rows)]])
        offset += len(rows)
    return np.concatenate(parts) if parts else np.zeros((0, reader.width), np.float32)


def rows_of(reader: BlockReader) -> int:
    """How many rows ``reader`` gives."""
    return sum(n for _, n in reader.blocks())


def source_bytes(rows: int, width: int) -> int:
    """Bytes the float32 matrix of ``rows`` x ``width`` takes in memory."""
    return rows * width * 4


def available_memory() -> int:
    """Bytes of memory available to new allocations now (``MemAvailable``; total memory where
    that is unknown)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 8 << 30
