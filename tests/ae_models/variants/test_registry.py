"""The registry, the deep autoencoder's shape and interface, and its persistence."""

from __future__ import annotations

import pytest
import torch

import ae_models
from ae_models.variants.deep import default_hidden


def test_registry_lists_and_creates_deep() -> None:
    assert "deep" in ae_models.list_models()
    model = ae_models.create_model("deep", input_dim=64, code_size=8)
    assert isinstance(model, ae_models.DeepAutoencoder)
    assert model.model_name == "deep"


def test_unknown_model_names_the_choices() -> None:
    with pytest.raises(
        ValueError, match=r"unknown model 'nope'; available: \['contractive', 'conv', 'deep'"
    ):
        ae_models.create_model("nope", input_dim=4)


def test_duplicate_registration_is_refused() -> None:
    with pytest.raises(ValueError, match="already registered"):

        @ae_models.register_model("deep")
        class Other(ae_models.Autoencoder):
            pass


def test_published_mnist_widths() -> None:
    assert default_hidden(784, 16) == (256, 128, 64, 32)
    cfg = ae_models.DeepConfig(input_dim=784, code_size=16)
    assert cfg.widths == (784, 256, 128, 64, 32, 16)


def test_tables_get_hidden_layers_wider_than_their_input() -> None:
    """Narrow inputs (tables) get 256-128 before the code, not widths halving from below the
    input (Adult's 100 inputs had 64-32, a 6-column table 4): the code is the bottleneck."""
    assert ae_models.DeepConfig(input_dim=100, code_size=16).widths == (100, 256, 128, 16)
    assert ae_models.DeepConfig(input_dim=6, code_size=3).widths == (6, 256, 128, 3)
    assert default_hidden(200, 150) == (256,)  # hidden layers wider than the code only


def test_code_size_must_be_smaller_than_input() -> None:
    with pytest.raises(ValueError, match="code_size 64 must be smaller than the input width 64"):
        ae_models.create_model("deep", input_dim=64, code_size=64)


def test_interface_shapes_and_heads() -> None:
    x = torch.rand(5, 20)
    for output in ("sigmoid", "linear"):
        model = ae_models.create_model("deep", input_dim=20, code_size=3, output=output)
        out = model(x)
        assert out.recon.shape == (5, 20)
        assert out.latent.shape == (5, 3)
        assert torch.equal(model.encode(x), out.latent)
        assert torch.allclose(model.decode(out.latent), out.recon)
        assert model.loss(x, out).ndim == 0
    sig = ae_models.create_model("deep", input_dim=20, code_size=3)
    with torch.no_grad():
        recon = sig(x).recon
    assert float(recon.min()) >= 0.0 and float(recon.max()) <= 1.0
    assert sig.config.loss_name == "bce"


def test_reconstruction_error_per_row() -> None:
    x = torch.tensor([[0.0, 1.0], [1.0, 1.0]])
    recon = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    assert ae_models.reconstruction_error(x, recon, "mse").tolist() == [0.5, 0.0]
    bce = ae_models.reconstruction_error(x, recon, "bce")
    assert bce[0] > bce[1]
    with pytest.raises(ValueError, match="unknown reconstruction error"):
        ae_models.reconstruction_error(x, recon, "l1")  # type: ignore[arg-type]


def test_save_load_roundtrip(tmp_path) -> None:
    model = ae_models.create_model("deep", input_dim=12, code_size=4, hidden=(8,))
    ae_models.save_model(model, tmp_path, extra={"threshold": 0.5})
    loaded, meta = ae_models.load_model(tmp_path)
    assert meta["threshold"] == 0.5 and meta["config"]["hidden"] == [8]
    x = torch.rand(3, 12)
    assert torch.equal(model(x).latent, loaded(x).latent)


def test_load_refuses_pickled_code(tmp_path) -> None:
    model = ae_models.create_model("deep", input_dim=12, code_size=4)
    ae_models.save_model(model, tmp_path)

    class Boom:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"payload": Boom()}, tmp_path / "weights.pt")
    with pytest.raises(Exception, match="Weights only load failed"):
        ae_models.load_model(tmp_path)
