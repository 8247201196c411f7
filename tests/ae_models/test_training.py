"""The generic training loop: it learns, it is repeatable, it stops early, it reports."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

import ae_models


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    x = load_digits().data.astype(np.float32) / 16.0
    return x[:1400], x[1400:]


def test_training_beats_the_mean_predictor(digits) -> None:
    train, val = digits
    model = ae_models.create_model("deep", input_dim=64, code_size=16)
    result = ae_models.train(model, train, val, ae_models.TrainConfig(epochs=40, batch_size=32))
    _, mse, _ = ae_models.encode_and_score(model, val)
    baseline = float(((val - train.mean(axis=0)) ** 2).mean())
    assert mse.mean() < 0.5 * baseline
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert result.best_epoch >= 1 and result.device == "cpu" and result.precision == "fp32"


def test_same_seed_same_model(digits) -> None:
    train, val = digits
    cfg = ae_models.TrainConfig(epochs=3, batch_size=64, seed=7)
    a = ae_models.create_model("deep", seed=7, input_dim=64, code_size=8)
    torch.rand(10)  # moving the global RNG must not matter
    b = ae_models.create_model("deep", seed=7, input_dim=64, code_size=8)
    ae_models.train(a, train, val, cfg)
    ae_models.train(b, train, val, cfg)
    for (name, pa_), (_, pb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(pa_, pb), name


def test_early_stopping_restores_best_epoch(digits) -> None:
    train, val = digits
    model = ae_models.create_model("deep", input_dim=64, code_size=8)
    # a learning rate this high diverges quickly, so validation stops improving
    cfg = ae_models.TrainConfig(epochs=200, lr=0.5, patience=3, lr_schedule="none")
    result = ae_models.train(model, train, val, cfg)
    assert result.stopped_early
    assert len(result.history) < 200
    best = min(h["val_loss"] for h in result.history)
    assert result.best_val_loss == pytest.approx(best)
    restored = ae_models.training.evaluate_loss(
        model, torch.from_numpy(val), 512, torch.device("cpu"), "fp32"
    )
    assert restored == pytest.approx(best, rel=1e-5)


def test_callbacks_see_every_epoch(digits) -> None:
    train, val = digits
    seen: list[int] = []

    class Recorder:
        def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
            assert {"train_loss", "val_loss", "lr", "seconds"} <= set(logs)
            seen.append(epoch)

    model = ae_models.create_model("deep", input_dim=64, code_size=8)
    ae_models.train(model, train, val, ae_models.TrainConfig(epochs=4, patience=0), [Recorder()])
    assert seen == [1, 2, 3, 4]


def test_bf16_autocast_on_cpu_trains(digits) -> None:
    train, val = digits
    model = ae_models.create_model("deep", input_dim=64, code_size=8)
    cfg = ae_models.TrainConfig(epochs=2, precision="bf16")
    result = ae_models.train(model, train, val, cfg)
    assert result.precision == "bf16" and np.isfinite(result.best_val_loss)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"epochs": 0}, "epochs must be >= 1"),
        ({"lr": 0}, "lr must be > 0"),
        ({"precision": "fp8"}, "unknown precision"),
        ({"device": "cuda:0"}, "CUDA is not available"),
    ],
)
def test_bad_training_settings_are_named(digits, kwargs, message) -> None:
    train, _ = digits
    if "device" in kwargs and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ValueError, match=message):
        model = ae_models.create_model("deep", input_dim=64, code_size=8)
        ae_models.train(model, train[:10], None, ae_models.TrainConfig(**kwargs))


def test_select_device_auto_is_a_real_device() -> None:
    assert ae_models.select_device("auto").type in ("cuda", "mps", "cpu")
