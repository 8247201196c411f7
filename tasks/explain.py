"""Explanations: which source columns make a row's reconstruction error unusual.

``top_columns`` of the feature table names, per row, the source columns whose share of the
error is largest against what is typical of the training rows; one-hot levels and the
inputs of one column are summed back to that column first.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from ae_models.preprocessing.normalizer import Normalizer


def column_groups(spec: str) -> tuple[list[str], np.ndarray]:
    """The source columns a normalizer spec maps its model inputs from, and the inputs x
    sources 0/1 matrix that sums each input's error term back into its column."""
    names, source_of = Normalizer.load(spec).source_groups()
    groups = np.zeros((len(source_of), len(names)), np.float32)
    groups[np.arange(len(source_of)), source_of] = 1.0
    return names, groups


def top_columns(
    errors: np.ndarray,
    groups: np.ndarray,
    names: list[str],
    k: int,
    typical: np.ndarray | None = None,
) -> pa.Array:
    """Per row, the ``k`` source columns whose error is most unusual, most unusual first:
    per-input error terms summed over each source column's inputs (``groups``: inputs x
    sources, one-hot groups summed back to their column), each divided by the same sum of
    the inputs' ``typical`` (training mean) errors. Without that division a column with many
    one-hot levels would top every row by its width alone; models saved without ``typical``
    rank by the raw sums."""
    contrib = errors @ groups
    if typical is not None:
        usual = np.asarray(typical, np.float32) @ groups
        floor = max(0.1 * float(np.median(usual)), 1e-12)  # a column always reconstructed
        contrib = contrib / np.maximum(usual, floor)  # exactly does not turn noise into "top"
    k = min(k, contrib.shape[1])
    top = np.argpartition(-contrib, k - 1, axis=1)[:, :k]
    order = np.take_along_axis(contrib, top, axis=1).argsort(axis=1)[:, ::-1]
    top = np.take_along_axis(top, order, axis=1)
    values = pa.array(np.asarray(names, dtype=object)[top.reshape(-1)], pa.string())
    offsets = pa.array(np.arange(0, top.size + 1, k, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, values)
