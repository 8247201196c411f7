"""Each autoencoder variant does what the literature says it does."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

import ae_models
from ae_models.variants.contractive import jacobian_frobenius_sq
from ae_models.variants.sparse import kl_sparsity

VARIANTS = ["deep", "denoising", "sparse", "contractive", "vae", "conv"]


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    return load_digits().data.astype(np.float32) / 16.0


def test_all_variants_are_registered() -> None:
    assert set(VARIANTS) <= set(ae_models.list_models())


@pytest.mark.parametrize("name", VARIANTS)
def test_every_variant_trains_without_nan(name, digits) -> None:
    model = ae_models.create_model(name, seed=0, input_dim=64, code_size=8)
    cfg = ae_models.TrainConfig(epochs=3, batch_size=64, patience=0)
    result = ae_models.train(model, digits[:1500], digits[1500:], cfg)
    assert all(np.isfinite(h["train_loss"]) and np.isfinite(h["val_loss"]) for h in result.history)
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    codes, mse, _ = ae_models.encode_and_score(model, digits[:10])
    assert codes.shape == (10, 8) and np.isfinite(mse).all()


@pytest.mark.parametrize("name", VARIANTS)
def test_eval_mode_is_deterministic(name, digits) -> None:
    model = ae_models.create_model(name, seed=0, input_dim=64, code_size=8).eval()
    x = torch.from_numpy(digits[:5])
    with torch.no_grad():
        assert torch.equal(model(x).latent, model(x).latent)
        assert torch.equal(model(x).latent, model.encode(x))


def test_denoising_corrupts_only_while_training(digits) -> None:
    model = ae_models.create_model("denoising", seed=0, input_dim=64, code_size=8)
    x = torch.from_numpy(digits[:50])
    with torch.no_grad():
        model.train()
        noisy = model(x).latent
        model.eval()
        clean = model(x).latent
    assert not torch.allclose(noisy, clean)
    from ae_models.variants.denoising import corrupt

    masked = corrupt(torch.ones(1000, 100), "masking", 0.3, clip=True)
    assert 0.25 < float((masked == 0).float().mean()) < 0.35
    noisy_in = corrupt(torch.full((100, 100), 0.5), "gaussian", 0.3, clip=True)
    assert 0.25 < float(noisy_in.std()) < 0.35 and float(noisy_in.min()) >= 0.0
    with pytest.raises(ValueError, match="noise must be"):
        ae_models.create_model("denoising", input_dim=64, code_size=8, noise="salt")


def test_sparse_penalties() -> None:
    model = ae_models.create_model("sparse", seed=0, input_dim=20, code_size=4, weight=0.5)
    x = torch.rand(8, 20)
    with torch.no_grad():
        out = model(x)
    assert float(out.latent.min()) >= 0.0  # ReLU code for the L1 penalty
    expected = 0.5 * out.latent.abs().sum(dim=1).mean()
    assert float(out.aux_loss) == pytest.approx(float(expected), rel=1e-5)
    code = torch.full((10, 3), 0.05)
    assert float(kl_sparsity(code, 0.05)) == pytest.approx(0.0, abs=1e-6)
    assert float(kl_sparsity(torch.full((10, 3), 0.5), 0.05)) > 0.5
    kl_model = ae_models.create_model("sparse", input_dim=20, code_size=4, penalty="kl")
    with torch.no_grad():
        z = kl_model(x).latent
    assert float(z.min()) >= 0.0 and float(z.max()) <= 1.0


def test_contractive_penalty_is_the_jacobian_norm() -> None:
    # a one-layer linear encoder has Jacobian W for every row: the penalty is ||W||_F^2
    model = ae_models.create_model("contractive", input_dim=10, code_size=3, hidden=())
    w = model.encoder[0].weight
    exact, _ = jacobian_frobenius_sq(model.encode, torch.rand(4, 10), projections=0)
    assert torch.allclose(exact, w.pow(2).sum().expand(4), rtol=1e-5)
    torch.manual_seed(0)
    estimate, _ = jacobian_frobenius_sq(model.encode, torch.rand(4, 10), projections=4000)
    assert torch.allclose(estimate, w.pow(2).sum().expand(4), rtol=0.1)
    out = model.train()(torch.rand(4, 10))
    expected = 1e-4 * float(w.detach().pow(2).sum())
    assert float(out.aux_loss.detach()) == pytest.approx(expected, rel=1e-4)


def test_vae_uses_the_mean_and_samples() -> None:
    model = ae_models.create_model("vae", seed=0, input_dim=64, code_size=4)
    x = torch.rand(6, 64)
    mu, _ = model.posterior(x)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x).latent, mu)
        assert torch.equal(model.encode(x), mu)
    samples = model.sample(5, generator=torch.Generator().manual_seed(1))
    assert samples.shape == (5, 64) and float(samples.min()) >= 0 and float(samples.max()) <= 1
    model.train()
    assert float(model(x).aux_loss.detach()) > 0  # the KL term


def test_conv_images_of_any_shape() -> None:
    model = ae_models.create_model(
        "conv", input_dim=31 * 17 * 3, code_size=8, image_shape=(31, 17, 3), channels=(8, 16, 32)
    )
    x = torch.rand(2, 31 * 17 * 3)
    out = model(x)
    assert out.recon.shape == x.shape and out.latent.shape == (2, 8)
    assert ae_models.create_model("conv", input_dim=784, code_size=16).config.image_shape == (
        28,
        28,
        1,
    )
    with pytest.raises(ValueError, match="not a square single-channel image"):
        ae_models.create_model("conv", input_dim=100 * 3, code_size=8)
    with pytest.raises(ValueError, match="holds 300 values, but the input width is 301"):
        ae_models.create_model("conv", input_dim=301, code_size=8, image_shape=(10, 10, 3))
