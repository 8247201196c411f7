"""Scoring: anomaly scores from reconstructions, their threshold and calibration
(:mod:`~ae_models.scoring.scorer`), the ensemble's extra detectors
(:mod:`~ae_models.scoring.detectors`, :mod:`~ae_models.scoring.isolation`) and drift
statistics of scored rows (:mod:`~ae_models.scoring.drift`).

``Scorer`` and ``score_rows`` are importable from here too: served models logged by earlier
releases import them from ``ae_models.scoring`` (loaded on first use, PEP 562).
"""

from __future__ import annotations

from typing import Any

_KEPT = ("Scorer", "score_rows")


def __getattr__(name: str) -> Any:
    """The names logged models import from this package, from the scorer module."""
    if name not in _KEPT:
        raise AttributeError(f"module 'ae_models.scoring' has no attribute {name!r}")
    from ae_models.scoring import scorer

    return getattr(scorer, name)
