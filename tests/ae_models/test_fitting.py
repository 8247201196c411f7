"""The one fit path: both front doors train and score through it, in one scoring pass."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import ae_models
from ae_models.fitting import fit_autoencoder
from ae_models.scoring import fit_scorer, score_rows


def blobs(n: int = 400, width: int = 12, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    basis = rng.normal(size=(3, width))
    return (rng.normal(size=(n, 3)) @ basis + 0.05 * rng.normal(size=(n, width))).astype(np.float32)


@pytest.mark.parametrize("kind", ["ensemble", "hybrid", "scaled_mse", "mse"])
def test_training_scores_from_the_fitting_pass_equal_scoring_again(kind: str) -> None:
    """fit_scorer takes the residuals and codes of one forward pass for its statistics and
    for the rows' scores: exactly what scoring the same rows again gives."""
    x = blobs()
    model = ae_models.create_model("deep", seed=0, input_dim=12, code_size=3, output="linear")
    ae_models.train(model, x, None, ae_models.TrainConfig(epochs=3, batch_size=64, seed=0))
    scorer, fitted = fit_scorer(model, x, kind, 0.05, batch_size=100)
    again = score_rows(model, x, scorer, batch_size=100)
    assert np.array_equal(fitted.scores, again.scores)
    assert np.array_equal(fitted.codes, again.codes)
    assert scorer.threshold == pytest.approx(np.quantile(again.scores, 0.95), rel=1e-6)


def test_estimator_and_fit_path_give_the_same_model() -> None:
    """AutoencoderReducer.fit is create_model + fit_autoencoder: the same seed and rows give
    the same weights, scorer and training scores through either door."""
    x = blobs(300)
    est = ae_models.AutoencoderReducer(code_size=3, epochs=4, validation_fraction=0.0).fit(x)
    model = ae_models.create_model(
        "deep", seed=0, input_dim=12, code_size=3, output="linear", hidden=(64, 32)
    )
    cfg = ae_models.TrainConfig(epochs=4, batch_size=16, lr=3e-3, patience=0, seed=0)
    order = np.random.default_rng(0).permutation(len(x))  # the estimator's shuffle
    fit = fit_autoencoder(model, x[order], None, cfg, contamination=0.01, score_on=x)
    assert np.array_equal(fit.fitted.scores, est.decision_scores_)
    assert fit.scorer == est.scorer_
    losses = [[h["train_loss"] for h in run] for run in (fit.history, est.history_)]
    assert losses[0] == losses[1]


def test_bce_scores_skip_the_matrix_and_match_it() -> None:
    """A sigmoid head's BCE score comes from the logits without the rows x columns matrix,
    equal to that matrix's row means within float32 rounding (targets outside [0, 1] are
    clamped as the matrix clamps them), and fitting and scoring give the same scores."""
    from ae_models.scoring import bce_row_means, column_errors

    x = 1 / (1 + np.exp(-blobs()))  # in (0, 1)
    model = ae_models.create_model("deep", seed=0, input_dim=12, code_size=3, output="sigmoid")
    ae_models.train(model, x, None, ae_models.TrainConfig(epochs=3, batch_size=64, seed=0))
    xt = torch.from_numpy(x)
    with torch.inference_mode():
        out = model.eval()(xt)
        for target in (xt, xt * 1.5 - 0.25):  # in range; partly outside it
            matrix = column_errors(target, out, "bce").mean(dim=1)
            assert torch.allclose(bce_row_means(target, out.logits), matrix, rtol=1e-5, atol=1e-6)
    scorer, fitted = fit_scorer(model, x, "bce", 0.05, batch_size=100)
    assert np.array_equal(fitted.scores, score_rows(model, x, scorer, batch_size=100).scores)
