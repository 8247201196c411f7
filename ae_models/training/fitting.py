"""The one fit path: train an autoencoder, then fit its scorer on the rows it learned from.

Both front doors use it: :class:`~ae_models.estimator.AutoencoderReducer` (``fit(X)``) and the
pipeline's train stage (``tasks/train.py``). Each creates its model with
:func:`~ae_models.variants.registry.create_model` first (a bad setting fails before any work), then
calls :func:`fit_autoencoder`.

Defaults: the two front doors share every default except the two below, kept apart on
purpose and stated here once. Both pick the code size
(:func:`~ae_models.training.config.auto_code_size`) and the batch size
(:func:`~ae_models.training.config.auto_batch_size`) from the data unless told, train without
trimming (``trim_fraction`` 0) and score anomalies with ``auto`` (:mod:`ae_models.scoring.scorer`).

============== =========== ============ ==================================================
setting        estimator   pipeline     why
============== =========== ============ ==================================================
learning rate  3e-3        1e-3         the estimator is used on small arrays, where
                                        small batches and few steps need a larger step
                                        size; the pipeline's large data sets train
                                        stably at 1e-3 (MNIST's published model)
hidden widths  64-32       256-128      the estimator is used as an anomaly detector on
(tables, under                          small tables: over the 27 ADBench sets, with the
256 columns)                            ensemble score, the narrower network generalizes
                                        better (mean AUROC 0.770 against 0.767; half A
                                        0.808 / 0.805, half B 0.729 / 0.726; worst set
                                        against PyOD's AutoEncoder -0.046 against -0.083)
                                        and fits in two thirds of the time; the
                                        pipeline's codes feed downstream models, where
                                        256-128 beat PCA on more tables
                                        (``benchmarks/downstream.py``)
============== =========== ============ ==================================================

Until the anomaly-quality work (issue 26) the estimator also trimmed (``trim_fraction``
0.1): trimming did not help the scores (on the 21 ADBench sets it was not tuned on, mean
AUROC 0.748 without it, 0.747 with it) and cost the reducer its MNIST 5-NN bar, so
both front doors now train on every row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from ae_models.scoring.scorer import DataKind, RowScores, Scorer, fit_scorer
from ae_models.training.loop import TrainConfig, TrainResult, train
from ae_models.training.streaming import (
    ArraySource,
    ParquetSource,
    rows_of,
    sample_mask,
    sample_rows,
)
from ae_models.variants.base import Autoencoder

ESTIMATOR_LR = 3e-3
ESTIMATOR_TABLE_HIDDEN = (64, 32)  # the estimator's hidden widths for inputs under 256 wide
SCORER_ROWS = 100_000  # training rows a streamed fit's scorer is fitted on, at most

Source = ParquetSource | ArraySource


@dataclass(frozen=True)
class FittedAutoencoder:
    """A trained model, its fitted scorer, the training record, and the codes and scores of
    the rows the scorer was fitted on."""

    model: Autoencoder
    scorer: Scorer
    result: TrainResult
    fitted: RowScores

    @property
    def history(self) -> list[dict[str, float]]:
        """Per-epoch losses and learning rate."""
        return self.result.history


def fit_autoencoder(
    model: Autoencoder,
    x_train: np.ndarray | Source,
    x_val: np.ndarray | Source | None,
    cfg: TrainConfig,
    *,
    score: str = "auto",
    contamination: float | Literal["auto"] = 0.01,
    callbacks: Sequence[Any] = (),
    score_on: np.ndarray | None = None,
    score_precision: str = "fp32",
    streaming: bool = False,
    data: DataKind = "unknown",
) -> FittedAutoencoder:
    """Train ``model`` on ``x_train`` (early stopping on ``x_val``), then fit its scorer in one
    forward pass over ``score_on`` (default: the training and validation rows together; for
    a source, a uniform sample of at most :data:`SCORER_ROWS` training rows).

    ``x_train`` and ``x_val`` are arrays, or sources (Parquet, memory-mapped arrays) that
    ``streaming`` streams rather than reads into memory; ``cfg.strategy == "ddp"`` trains
    data-parallel on a :class:`~ae_models.training.streaming.ParquetSource`
    (:mod:`ae_models.training.distributed`). ``score_precision`` is the precision the scores are
    computed at; the pipeline passes :data:`~ae_models.runtime.SCORING_PRECISION`, the rule
    its feature table is scored with, so the threshold fits the scores written. ``data``
    says what the rows are (``"table"``: ``score="auto"`` is ``ensemble`` whatever the
    output head; ``"pixels"``: ``bce`` for a sigmoid head; see
    :func:`~ae_models.scoring.scorer.resolve_score`). A score kind the model cannot give raises
    ValueError.
    """
    if model.starts_from_a_baseline:  # the dense variants' pca_start
        # PCA's directions settle long before SCORER_ROWS rows
        model.start_from_pca(_sample(x_train, cfg), seed=cfg.seed)  # type: ignore[operator]
    if cfg.strategy == "ddp":
        from ae_models.training.distributed import train_ddp

        result = train_ddp(model, x_train, x_val, cfg, callbacks, streaming=streaming)  # type: ignore[arg-type]
    else:
        result = train(
            model, _rows(x_train, cfg, streaming), _rows(x_val, cfg, streaming), cfg, callbacks
        )
    if score_on is None:
        if isinstance(x_train, ParquetSource | ArraySource):
            score_on = _sample(x_train, cfg)
        elif x_val is None or len(x_val) == 0:  # type: ignore[arg-type]
            score_on = x_train
        else:
            score_on = np.vstack([x_train, x_val])  # type: ignore[list-item]
    scorer, fitted = fit_scorer(
        model,
        score_on,
        score,
        contamination,
        device=cfg.device,
        precision=score_precision,
        seed=cfg.seed,
        data=data,
    )
    return FittedAutoencoder(model, scorer, result, fitted)


def _sample(x: np.ndarray | Source, cfg: TrainConfig) -> np.ndarray:
    """A seeded uniform sample of at most :data:`SCORER_ROWS` training rows, as an array,
    from an array or read from a source in one pass."""
    if not isinstance(x, ParquetSource | ArraySource):
        return x[sample_mask(len(x), SCORER_ROWS, cfg.seed)]
    reader = x.reader()
    return sample_rows(reader, sample_mask(rows_of(reader), SCORER_ROWS, cfg.seed))


def _rows(x: Any, cfg: TrainConfig, streaming: bool) -> Any:
    """A source opened as training rows (streamed or read in once); arrays as they are."""
    if isinstance(x, ParquetSource | ArraySource):
        width = len(x.columns) if isinstance(x, ParquetSource) else x.reader().width
        return x.open(streaming=streaming, seed=cfg.seed, shuffle_rows=cfg.shuffle_rows(width))
    return x
