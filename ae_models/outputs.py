"""What a model gives for each row it scores, by name: the one builder of feature rows.

The feature-table writer (``tasks/write_features.py``) and the served MLflow model
(``tasks/pyfunc_model.py``) both turn a batch of normalized rows into these columns through
:func:`score_outputs`, so a row scores, is calibrated and is flagged the same way wherever it
is written or served. The names are aepipe's vocabulary (:mod:`ae_models.vocabulary`), which
the feature table's schema (``feature_store/schema.py``) declares its columns with.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import Tensor

from ae_models.runtime import SCORING_PRECISION
from ae_models.scoring.scorer import Scorer, score_rows
from ae_models.vocabulary import (
    ANOMALY_SCORE,
    ENTITY_KEY,
    EVENT_TIMESTAMP,
    IS_ANOMALY,
    LABEL,
    RECON_ERROR,
    RECON_MSE,
    latent_columns,
)

# columns a served model accepts beside the features without a warning (ids, times, labels)
KNOWN_INPUTS = (ENTITY_KEY, EVENT_TIMESTAMP, LABEL)
# the id column's name as served models logged before the vocabulary import it (their code
# runs against this package when a process that has it loads them: keep it)
ENTITY_ID = ENTITY_KEY


@dataclass(frozen=True)
class RowOutputs:
    """A scored batch (NumPy): codes, scores, their calibrated form (None for models saved
    before calibration existed), the flags, and on request the per-column error terms and the
    plain MSE."""

    codes: np.ndarray
    scores: np.ndarray
    calibrated: np.ndarray | None
    flagged: np.ndarray
    per_column: np.ndarray | None = None
    mse: np.ndarray | None = None

    def columns(self) -> dict[str, np.ndarray]:
        """The named output columns, in table order: ``z_*``, ``recon_error``,
        ``anomaly_score`` (when calibrated), ``is_anomaly``, then ``recon_mse`` when asked."""
        out = {name: self.codes[:, j] for j, name in enumerate(latent_columns(self.codes.shape[1]))}
        out[RECON_ERROR] = self.scores
        if self.calibrated is not None:
            out[ANOMALY_SCORE] = self.calibrated
        out[IS_ANOMALY] = self.flagged
        if self.mse is not None:
            out[RECON_MSE] = self.mse
        return out


def score_outputs(
    model: Any,
    x: np.ndarray | Tensor,
    scorer: Scorer,
    *,
    device: str = "auto",
    per_column: bool = False,
    mse: bool = False,
) -> RowOutputs:
    """Score normalized rows ``x`` with ``model`` and its ``scorer`` in one forward pass, at
    :data:`~ae_models.runtime.SCORING_PRECISION`: codes, scores, calibrated scores, flags."""
    rows = score_rows(
        model,
        x,
        scorer,
        device=device,
        precision=SCORING_PRECISION,
        per_column=per_column,
        mse=mse,
    )
    calibrated = scorer.calibration.calibrate(rows.scores) if scorer.calibration.quantiles else None
    return RowOutputs(
        rows.codes,
        rows.scores,
        calibrated,
        rows.scores > scorer.threshold,
        rows.per_column,
        rows.mse,
    )
