"""The normalized splits as training reads them: whole in memory, or as streamable sources
and bounded uniform samples when they are too large to hold (no Prefect here)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pyarrow.parquet as pq

from ae_models.preprocessing.tensor_column import FEATURES, batch_matrix
from ae_models.training.streaming import ParquetSource, rows_of, sample_mask, sample_rows
from ae_models.vocabulary import LABEL, SPLIT, SPLITS

if TYPE_CHECKING:
    from tasks.normalize import NormalizedData


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
