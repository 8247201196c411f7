"""The one fit path: both front doors train and score through it, in one scoring pass."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import ae_models
from ae_models.scoring.scorer import fit_scorer, score_rows
from ae_models.training.fitting import fit_autoencoder


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


def test_kl_score_is_cross_entropy_less_the_targets_entropy() -> None:
    """``kl``: zero at a perfect reconstruction of a continuous target (where ``bce`` keeps
    the target's entropy, largest at 0.5: the bias that ranked a min-max table's extreme rows,
    its anomalies, as the most normal), equal to ``bce`` on 0/1 targets, the distance outside
    [0, 1] added; the row means from the logits equal the matrix's, and fitting and scoring
    give the same scores."""
    from types import SimpleNamespace

    from ae_models.scoring.scorer import column_errors

    target = torch.tensor([[0.5, 0.5, 0.5], [0.01, 0.99, 0.01], [0.0, 1.0, 0.0]])
    perfect = SimpleNamespace(logits=torch.logit(target.clamp(1e-6, 1 - 1e-6)), recon=target)
    kl = column_errors(target, perfect, "kl").mean(dim=1)
    bce = column_errors(target, perfect, "bce").mean(dim=1)
    assert kl.abs().max() < 1e-4  # perfect reconstructions: nothing to report
    assert bce[0] > bce[1] > bce[2]  # bce: the middle row "worse" for its own entropy
    binary = (torch.rand(20, 3, generator=torch.Generator().manual_seed(0)) > 0.5).float()
    guess = SimpleNamespace(logits=torch.randn(20, 3), recon=None)
    assert torch.allclose(
        column_errors(binary, guess, "kl"), column_errors(binary, guess, "bce"), atol=1e-6
    )
    beyond = target + torch.tensor([[2.0, 0.0, 0.0]])  # 2.5: 1.5 beyond the training range
    # KL(1 || 0.5) = log 2 for the clamped target, plus the squared 1.5 beyond [0, 1]
    expected = np.log(2) + 1.5**2
    assert column_errors(beyond, perfect, "kl")[0, 0].item() == pytest.approx(expected, rel=1e-4)

    x = 1 / (1 + np.exp(-blobs()))  # in (0, 1)
    model = ae_models.create_model("deep", seed=0, input_dim=12, code_size=3, output="sigmoid")
    assert fit_scorer(model, x, "auto", 0.05)[0].kind == "kl"  # [0, 1] data of unknown kind
    assert fit_scorer(model, x, "auto", 0.05, data="table")[0].kind == "ensemble"
    assert fit_scorer(model, x, "auto", 0.05, data="pixels")[0].kind == "bce"


@pytest.mark.parametrize("kind", ["bce", "kl"])
def test_bce_scores_skip_the_matrix_and_match_it(kind: str) -> None:
    """A sigmoid head's BCE (and KL) score comes from the logits without the rows x columns
    matrix, equal to that matrix's row means within float32 rounding (targets outside
    [0, 1] are clamped as the matrix clamps them; KL adds the distance outside), and fitting
    and scoring give the same scores."""
    from ae_models.scoring.scorer import bce_row_means, column_errors, kl_row_means

    row_means = bce_row_means if kind == "bce" else kl_row_means

    x = 1 / (1 + np.exp(-blobs()))  # in (0, 1)
    model = ae_models.create_model("deep", seed=0, input_dim=12, code_size=3, output="sigmoid")
    ae_models.train(model, x, None, ae_models.TrainConfig(epochs=3, batch_size=64, seed=0))
    xt = torch.from_numpy(x)
    with torch.inference_mode():
        out = model.eval()(xt)
        for target in (xt, xt * 1.5 - 0.25):  # in range; partly outside it
            matrix = column_errors(target, out, kind).mean(dim=1)
            assert torch.allclose(row_means(target, out.logits), matrix, rtol=1e-4, atol=1e-5)
    scorer, fitted = fit_scorer(model, x, kind, 0.05, batch_size=100)
    assert np.array_equal(fitted.scores, score_rows(model, x, scorer, batch_size=100).scores)


def _breast_cancer() -> tuple[np.ndarray, np.ndarray]:
    """A real table that ships with scikit-learn, standardized on its training rows."""
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    train, val = train_test_split(load_breast_cancer().data, test_size=0.3, random_state=0)
    scaler = StandardScaler().fit(train)
    return scaler.transform(train).astype(np.float32), scaler.transform(val).astype(np.float32)


def _val_mse(model, val: np.ndarray) -> float:
    with torch.no_grad():
        return float(((model(torch.as_tensor(val)).recon.numpy() - val) ** 2).mean())


@pytest.mark.parametrize("kind", ["deep", "denoising", "contractive"])
def test_a_pca_start_reconstructs_as_pca_before_training(kind: str) -> None:
    from sklearn.decomposition import PCA

    from ae_models.variants.registry import create_model

    train, val = _breast_cancer()
    model = create_model(kind, input_dim=30, code_size=4, output="linear", pca_start=True)
    model.start_from_pca(train)
    model.eval()
    pca = PCA(4).fit(train)
    with torch.no_grad():
        codes = model.encode(torch.as_tensor(val)).numpy()
        recon = model(torch.as_tensor(val)).recon.numpy()
    np.testing.assert_allclose(np.abs(codes), np.abs(pca.transform(val)), atol=1e-4)
    np.testing.assert_allclose(recon, pca.inverse_transform(pca.transform(val)), atol=1e-4)


@pytest.mark.parametrize(("lr", "learns"), [(3e-3, True), (1.0, False)])
def test_a_pca_start_never_loses_to_pca_on_the_validation_rows(lr: float, learns: bool) -> None:
    """Trained well, the residual layers improve on PCA of the code's width; trained badly
    (a step size that wrecks every epoch), the model keeps its PCA start (epoch 0)."""
    from sklearn.decomposition import PCA

    from ae_models.training.loop import TrainConfig
    from ae_models.variants.registry import create_model

    train, val = _breast_cancer()
    pca = PCA(4).fit(train)
    pca_mse = float(((pca.inverse_transform(pca.transform(val)) - val) ** 2).mean())
    model = create_model("deep", input_dim=30, code_size=4, output="linear", pca_start=True)
    fitted = fit_autoencoder(model, train, val, TrainConfig(epochs=12, lr=lr, patience=4))
    mse = _val_mse(model, val)
    assert mse <= pca_mse * (1 + 1e-5)
    if learns:
        assert fitted.result.best_epoch > 0 and mse < 0.95 * pca_mse
    else:
        assert fitted.result.best_epoch == 0 and mse == pytest.approx(pca_mse, rel=1e-4)


def test_a_pca_start_survives_saving_and_the_vae_refuses_it(tmp_path) -> None:
    from ae_models.variants.registry import create_model
    from ae_models.variants.serialization import load_model, save_model

    train, val = _breast_cancer()
    model = create_model("sparse", input_dim=30, code_size=4, output="linear", pca_start=True)
    model.start_from_pca(train)
    model.eval()
    loaded, _ = load_model(save_model(model, tmp_path / "model"))
    assert _val_mse(loaded, val) == _val_mse(model, val)
    with pytest.raises(ValueError, match="pca_start is for the deep"):
        create_model("vae", input_dim=30, code_size=4, pca_start=True)
