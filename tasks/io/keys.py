"""Row keys for the duplicate check: each key (an entity id, or an (id, event time) pair)
hashed to two 64-bit SipHash values, and a ledger that finds keys repeated anywhere in an
ingest in bounded memory, by spilling the hashes to files a slice of the hash space each."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

_SECOND_KEY = "aepipe-seen-key2"  # (16 bytes: SipHash's key)


def key_hashes(ids: pa.Array, times: pa.Array | None = None) -> np.ndarray:
    """The (n, 2) uint64 hashes of the keys: the entity ``ids`` (text), or (id, event time)
    pairs when the source has ``times`` (timestamps; the time's hash mixed in, no key text
    built). Two distinct keys agree in both with a chance of about 1e-25 at 10M rows."""
    values = ids.fill_null("").to_numpy(zero_copy_only=False)
    first = pd.util.hash_array(values, categorize=False)
    second = pd.util.hash_array(values, hash_key=_SECOND_KEY, categorize=False)
    if times is not None:
        micros = times.cast(pa.timestamp("us", tz="UTC")).cast(pa.int64()).fill_null(0)
        micros = micros.to_numpy()
        first = _combined(first, pd.util.hash_array(micros))
        second = _combined(second, pd.util.hash_array(micros, hash_key=_SECOND_KEY))
    return np.column_stack([first, second])


def _combined(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Two uint64 hashes mixed into one (boost's ``hash_combine``, 64-bit)."""
    return a ^ (b + np.uint64(0x9E3779B97F4A7C15) + (a << np.uint64(6)) + (a >> np.uint64(2)))


def repeated(hashes: np.ndarray) -> np.ndarray:
    """Which of ``hashes`` repeat an earlier row's (the first kept)."""
    order = np.argsort(hashes[:, 0], kind="stable")  # equal keys keep their order
    ordered = hashes[order]
    same = (ordered[1:, 0] == ordered[:-1, 0]) & (ordered[1:, 1] == ordered[:-1, 1])
    out = np.zeros(len(hashes), dtype=bool)
    out[order[1:][same]] = True
    return out


class KeyLedger:
    """Keys of rows numbered 0, 1, ... in the order added, for finding the rows whose key an
    earlier row has, after the fact. Each key is a 24-byte record (its two hashes, its row)
    in one of ``buckets`` files chosen by the hash's top bits; at most ``buffer_rows``
    records wait in memory. :meth:`repeats` then sorts one bucket at a time, so memory is
    about ``buffer_rows + rows / buckets`` records whatever the number of rows (a set of
    the keys in memory held 16 bytes a row, and twice that while its runs merged)."""

    def __init__(self, folder: Path, buckets: int = 64, buffer_rows: int = 1 << 20) -> None:
        if buckets & (buckets - 1) or not 1 < buckets <= 256:
            raise ValueError("buckets must be a power of two from 2 to 256")
        self._dir = tempfile.TemporaryDirectory(prefix="keys-", dir=folder)
        self.folder = Path(self._dir.name)
        self.shift = np.uint64(64 - (buckets.bit_length() - 1))
        self.buckets = buckets
        self.buffer_rows = buffer_rows
        self._waiting: list[np.ndarray] = []
        self._held = 0
        self.rows = 0

    def add(self, hashes: np.ndarray) -> None:
        """Record the keys of the next ``len(hashes)`` rows."""
        records = np.empty((len(hashes), 3), np.uint64)  # first hash, second, row
        records[:, :2] = hashes
        records[:, 2] = np.arange(self.rows, self.rows + len(hashes), dtype=np.uint64)
        self.rows += len(hashes)
        self._waiting.append(records)
        self._held += len(records)
        if self._held >= self.buffer_rows:
            self._spill()

    def _spill(self) -> None:
        """Append the waiting records to their buckets' files."""
        if not self._waiting:
            return
        records = np.concatenate(self._waiting)
        self._waiting, self._held = [], 0
        bucket = (records[:, 0] >> self.shift).astype(np.uint8)
        order = np.argsort(bucket, kind="stable")  # (a radix sort, on bytes)
        bounds = np.searchsorted(bucket[order], np.arange(self.buckets + 1))
        records = records[order]
        for k in range(self.buckets):
            if bounds[k] < bounds[k + 1]:
                with open(self.folder / f"{k:03d}", "ab") as fh:
                    fh.write(records[bounds[k] : bounds[k + 1]].tobytes())

    def repeats(self) -> np.ndarray:
        """The rows (sorted) whose key an earlier row has."""
        if self._held == self.rows:  # never spilled: all of it is here, and little
            held = np.concatenate(self._waiting) if self._waiting else np.zeros((0, 3), np.uint64)
            return np.sort(_repeats(held)).astype(np.int64)
        self._spill()
        found = []
        for k in range(self.buckets):
            path = self.folder / f"{k:03d}"
            if path.exists():
                found.append(_repeats(np.fromfile(path, np.uint64).reshape(-1, 3)))
        rows = np.concatenate(found) if found else np.zeros(0, np.uint64)
        return np.sort(rows).astype(np.int64)

    def close(self) -> None:
        """Delete the ledger's files."""
        self._dir.cleanup()

    def __enter__(self) -> KeyLedger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _repeats(records: np.ndarray) -> np.ndarray:
    """The rows of ``records`` (first hash, second, row) whose two hashes an earlier row
    has. Sorted by the first hash alone; only the few rows that share one (repeats, or the
    rare 64-bit coincidence) are sorted by all three."""
    ordered = records[np.argsort(records[:, 0])]
    equal = ordered[1:, 0] == ordered[:-1, 0]
    if not equal.any():
        return np.zeros(0, np.uint64)
    near = np.zeros(len(ordered), dtype=bool)
    near[1:] |= equal
    near[:-1] |= equal
    group = ordered[near]
    group = group[np.lexsort((group[:, 2], group[:, 1], group[:, 0]))]
    same = (group[1:, 0] == group[:-1, 0]) & (group[1:, 1] == group[:-1, 1])
    return group[1:, 2][same]


class KeyFile:
    """The key hashes of a partition's written rows, in order, appended to a file (16 bytes
    a row): the merge's duplicate check reads them instead of hashing the ids again."""

    def __init__(self, path: Path | None) -> None:
        """Write to ``path``; None: keep no keys (the context gives None)."""
        self.path = path

    def __enter__(self) -> KeyFile | None:
        if self.path is None:
            return None
        self._fh = open(self.path, "wb")
        return self

    def add(self, ids: pa.ChunkedArray, times: pa.ChunkedArray | None) -> None:
        """Append the hashes of the next rows' keys (their ids, and event times if any)."""
        ts = times.combine_chunks() if times is not None else None
        self._fh.write(key_hashes(ids.combine_chunks(), ts).tobytes())

    def __exit__(self, *exc: object) -> None:
        if self.path is not None:
            self._fh.close()
