"""Splits: each row's split from a seeded hash of its entity id (the one place splits are
assigned), and the normalized splits as training reads them: whole in memory, or as
streamable sources and bounded uniform samples when they are too large to hold (no Prefect
here)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ae_models.preprocessing.tensor_column import FEATURES, batch_matrix
from ae_models.training.streaming import ParquetSource, rows_of, sample_mask, sample_rows
from ae_models.vocabulary import LABEL, SPLIT, SPLITS

if TYPE_CHECKING:
    from tasks.stages import NormalizedData

SPLIT_NAMES = pa.array(SPLITS, pa.string())  # split codes 0, 1, 2, as the table stores them


def split_codes(
    ids: pd.Series | pa.Array | pa.ChunkedArray,
    test_fraction: float,
    val_fraction: float,
    seed: int,
) -> np.ndarray:
    """Each row's split as a code (0 train, 1 val, 2 test: :data:`SPLIT_NAMES`) from a seeded
    hash of its entity id: stable across runs, whatever reads the rows and in what order.

    The hash is pandas' ``hash_array`` of the ids as text (SipHash with the seed's key),
    taken on the values directly: ids are unique, so pandas' factorizing first (twice the
    time) buys nothing, and the values are the same."""
    key = f"aepipe{seed:010d}"[-16:]
    if isinstance(ids, pa.ChunkedArray | pa.Array):
        values = ids.cast(pa.string()).to_numpy(zero_copy_only=False)
    else:
        values = ids.astype(str).to_numpy(dtype=object)
    h = pd.util.hash_array(values, hash_key=key, categorize=False)
    u = (h >> np.uint64(11)).astype(np.float64) / float(1 << 53)
    codes = np.zeros(len(u), np.int8)
    codes[u < test_fraction + val_fraction] = 1
    codes[u < test_fraction] = 2
    return codes


def assign_splits(
    ids: pd.Series | pa.Array | pa.ChunkedArray,
    test_fraction: float,
    val_fraction: float,
    seed: int,
) -> np.ndarray:
    """'train' / 'val' / 'test' per row (:func:`split_codes` as names)."""
    return np.array(SPLITS)[split_codes(ids, test_fraction, val_fraction, seed)]


def split_counts(codes: np.ndarray) -> dict[str, int]:
    """Rows per split (every split named, 0 when it has none) of split codes."""
    per_code = np.bincount(codes, minlength=len(SPLITS)).tolist()
    return dict(zip(SPLITS, per_code, strict=True))


def load_split_matrices(data: NormalizedData) -> dict[str, np.ndarray]:
    """Feature matrix (float32) per split of a normalized dataset."""
    table = pq.read_table(data.path, columns=[SPLIT, FEATURES])
    splits = table.column(SPLIT).to_numpy(zero_copy_only=False)
    matrix = batch_matrix(table)
    return {s: matrix[splits == s] for s in SPLITS}


SAMPLE_ROWS = 100_000  # rows of each split measured and pictured when training streams


def split_source(data: NormalizedData, split: str) -> ParquetSource:
    """The feature matrix of one split of a normalized dataset, as a streamable source."""
    return ParquetSource(data.path, (FEATURES,), (SPLIT, split))


def sample_splits(
    data: NormalizedData, max_rows: int = SAMPLE_ROWS, seed: int = 0
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray] | None]:
    """A uniform sample of at most ``max_rows`` rows of each split (float32 features) and
    their labels, read in one pass a split: what training measures and pictures when the
    splits are not read into memory whole."""
    parts, takes = {}, {}
    for split in SPLITS:
        reader = split_source(data, split).reader()
        takes[split] = sample_mask(rows_of(reader), max_rows, seed)
        parts[split] = sample_rows(reader, takes[split])
    if not data.has_label:
        return parts, None
    labels = load_split_labels(data)
    return parts, {s: labels[s][takes[s]] for s in labels}


def load_split_labels(data: NormalizedData) -> dict[str, np.ndarray]:
    """Label per split of a normalized dataset that kept one (never a model input)."""
    table = pq.read_table(data.path, columns=[SPLIT, LABEL])
    splits = table.column(SPLIT).to_numpy(zero_copy_only=False)
    y = table.column(LABEL).to_numpy(zero_copy_only=False)
    return {s: y[splits == s] for s in SPLITS}
