"""Preprocessing: the fitted normalizer that turns raw columns into model input
(:mod:`~ae_models.preprocessing.normalizer`), the per-column statistics it is fitted from,
gathered batch by batch (:mod:`~ae_models.preprocessing.column_stats`), and the feature
matrix as one Parquet column (:mod:`~ae_models.preprocessing.tensor_column`).

``Normalizer`` and ``NORMALIZER_FILE`` are importable from here too: served models logged by
earlier releases import them from ``ae_models.preprocessing`` (loaded on first use).
"""

from __future__ import annotations

from typing import Any

_KEPT = ("NORMALIZER_FILE", "Normalizer")


def __getattr__(name: str) -> Any:
    """The names logged models import from this package, from the normalizer module."""
    if name not in _KEPT:
        raise AttributeError(f"module 'ae_models.preprocessing' has no attribute {name!r}")
    from ae_models.preprocessing import normalizer

    return getattr(normalizer, name)
