"""The generic training loop: it learns, it is repeatable, it stops early, it reports."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

import ae_models
from ae_models.training.loop import ONECYCLE_MIN_STEPS, _make_scheduler
from ae_models.training.streaming import ArraySource


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
    assert result.best_epoch >= 1 and result.device == "cpu"
    assert result.precision == "fp32"  # 64 inputs: too narrow for bf16 to pay on the CPU
    cpu = torch.device("cpu")
    wide = "bf16" if ae_models.runtime.cpu_has_fast_bf16() else "fp32"
    assert ae_models.resolve_precision("auto", cpu, width=784) == wide
    assert ae_models.resolve_precision("fp32", cpu, width=784) == "fp32"


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
    restored = ae_models.training.loop.evaluate_loss(
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


def test_bf16_autocast_on_cpu_trains_like_fp32(digits) -> None:
    """bf16 autocast trains the same model to about the same loss as fp32 (bf16 keeps 8 bits
    of mantissa: the losses agree within a few percent, not exactly) and learns."""
    train, val = digits
    losses = {}
    for precision in ("fp32", "bf16"):
        model = ae_models.create_model("deep", seed=0, input_dim=64, code_size=8)
        cfg = ae_models.TrainConfig(
            epochs=8, batch_size=64, lr=3e-3, precision=precision, seed=0, patience=0
        )
        result = ae_models.train(model, train, val, cfg)
        assert result.precision == precision
        losses[precision] = [h["val_loss"] for h in result.history]
    assert losses["bf16"][-1] < 0.9 * losses["bf16"][0]  # it learned
    assert losses["bf16"][-1] == pytest.approx(losses["fp32"][-1], rel=0.05)
    assert losses["bf16"] != losses["fp32"]  # and autocast really ran in bf16


def test_fp16_scales_the_loss_and_clips_the_unscaled_gradients(
    digits, tmp_path, monkeypatch
) -> None:
    """fp16 is a GPU precision (refused on the CPU); its path, autocast to fp16 with a
    gradient scaler, runs here with the refusal bypassed. The scaler multiplies the loss by
    about 2**16; clipping must see the unscaled gradients (norms like fp32's), or it would
    clip gradients 65,000 times too large."""
    import ae_models.training.loop as training

    train, val = digits
    monkeypatch.setattr(training, "resolve_precision", lambda p, device, width=None: p)
    clip = torch.nn.utils.clip_grad_norm_
    norms: list[float] = []

    def recorded(parameters, max_norm):
        norms.append(float(clip(parameters, max_norm)))
        return norms[-1]

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", recorded)
    losses, median_norm = {}, {}
    for precision in ("fp32", "fp16"):
        model = ae_models.create_model("deep", seed=0, input_dim=64, code_size=8)
        cfg = ae_models.TrainConfig(
            epochs=6, batch_size=64, lr=3e-3, precision=precision, seed=0, patience=0,
            grad_clip=1.0, checkpoint_dir=str(tmp_path / precision),
        )  # fmt: skip
        norms.clear()
        result = ae_models.train(model, train, val, cfg)
        assert result.precision == precision
        losses[precision] = result.history[-1]["val_loss"]
        median_norm[precision] = float(np.median(norms))
    assert losses["fp16"] == pytest.approx(losses["fp32"], rel=0.05)
    assert median_norm["fp16"] == pytest.approx(median_norm["fp32"], rel=0.5)
    state = torch.load(tmp_path / "fp16" / training.CHECKPOINT, weights_only=True)
    assert state["scaler"]["scale"] >= 2.0**10  # the loss was scaled
    assert torch.load(tmp_path / "fp32" / training.CHECKPOINT, weights_only=True)["scaler"] == {}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"epochs": 0}, "epochs must be >= 1"),
        ({"lr": 0}, "lr must be > 0"),
        ({"precision": "fp8"}, "unknown precision"),
        ({"device": "cuda:0"}, "CUDA is not available"),
        ({"trim_fraction": 0.5}, "trim_fraction must be in"),
        ({"trim_warmup": -1}, "trim_warmup must be >= 0"),
    ],
)
def test_bad_training_settings_are_named(digits, kwargs, message) -> None:
    train, _ = digits
    if "device" in kwargs and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ValueError, match=message):
        model = ae_models.create_model("deep", input_dim=64, code_size=8)
        ae_models.train(model, train[:10], None, ae_models.TrainConfig(**kwargs))


@pytest.mark.parametrize(
    ("cuda", "mps", "expected"),
    [(True, True, "cuda"), (False, True, "mps"), (False, False, "cpu")],
)
def test_select_device_auto_prefers_cuda_then_mps_then_cpu(
    monkeypatch, cuda: bool, mps: bool, expected: str
) -> None:
    """The rule, whatever this machine has: the availability checks are what ``auto``
    reads, so they are set here (a device object needs no hardware)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)
    assert ae_models.select_device("auto").type == expected
    assert ae_models.select_device("cpu").type == "cpu"


class _Interrupt(Exception):
    pass


class _StopAt:
    """Callback that kills training after a given epoch, like a crash would."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        if epoch == self.epoch:
            raise _Interrupt


def _streamed(x: np.ndarray) -> ArraySource:
    """``x`` as a source of blocks of 200 rows (several blocks, a buffer of two)."""
    return ArraySource(x, block_rows=200)


@pytest.mark.parametrize(
    ("name", "streaming"),
    [("deep", False), ("denoising", False), ("vae", False), ("deep", True), ("denoising", True)],
)
def test_resume_after_interruption_matches_uninterrupted(digits, tmp_path, name, streaming) -> None:
    train, val = digits
    if streaming:  # rows streamed by blocks, read ahead, shuffled in a buffer of 400 rows
        train = _streamed(train).open(streaming=True, seed=3, shuffle_rows=400)
        val = _streamed(val).open(streaming=True, seed=3)
    cfg = ae_models.TrainConfig(epochs=6, batch_size=64, patience=0, seed=3)
    straight = ae_models.create_model(name, seed=1, input_dim=64, code_size=8)
    expected = ae_models.train(straight, train, val, cfg)

    ckpt = ae_models.TrainConfig(**{**cfg.to_dict(), "checkpoint_dir": str(tmp_path)})
    first = ae_models.create_model(name, seed=1, input_dim=64, code_size=8)
    with pytest.raises(_Interrupt):
        ae_models.train(first, train, val, ckpt, callbacks=[_StopAt(4)])
    assert (tmp_path / "checkpoint.pt").is_file()
    again = ae_models.create_model(name, seed=1, input_dim=64, code_size=8)
    resumed = ae_models.train(again, train, val, ckpt)
    assert resumed.resumed_from == 4
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3, 4, 5, 6]
    assert resumed.history[-1]["val_loss"] == expected.history[-1]["val_loss"]
    for key, value in straight.state_dict().items():
        assert torch.equal(value, again.state_dict()[key]), key


def test_checkpoint_from_other_config_is_not_resumed(digits, tmp_path) -> None:
    train, val = digits
    cfg = ae_models.TrainConfig(epochs=2, batch_size=64, checkpoint_dir=str(tmp_path))
    ae_models.train(ae_models.create_model("deep", input_dim=64, code_size=8), train, val, cfg)
    other = ae_models.TrainConfig(**{**cfg.to_dict(), "lr": 0.01})
    result = ae_models.train(
        ae_models.create_model("deep", input_dim=64, code_size=8), train, val, other
    )
    assert result.resumed_from == 0 and len(result.history) == 2


def test_finished_checkpoint_returns_the_trained_model(digits, tmp_path) -> None:
    train, val = digits
    cfg = ae_models.TrainConfig(epochs=3, batch_size=64, patience=0, checkpoint_dir=str(tmp_path))
    first = ae_models.create_model("deep", seed=0, input_dim=64, code_size=8)
    ae_models.train(first, train, val, cfg)
    second = ae_models.create_model("deep", seed=5, input_dim=64, code_size=8)
    result = ae_models.train(second, train, val, cfg)
    assert result.resumed_from == 3 and len(result.history) == 3
    for key, value in first.state_dict().items():
        assert torch.equal(value, second.state_dict()[key]), key


def test_onecycle_warms_up_then_anneals(digits) -> None:
    train, _ = digits
    model = ae_models.create_model("deep", input_dim=64, code_size=8)
    cfg = ae_models.TrainConfig(epochs=8, lr=0.01, lr_schedule="onecycle", patience=0)
    lrs = [h["lr"] for h in ae_models.train(model, train, None, cfg).history]
    peak = lrs.index(max(lrs))
    assert 0 < peak < len(lrs) - 1 and max(lrs) <= 0.01 and lrs[-1] < 1e-4


def test_progress_bar_writes_a_line_per_epoch(digits) -> None:
    import io

    train, _ = digits
    stream = io.StringIO()
    model = ae_models.create_model("deep", input_dim=64, code_size=8)
    ae_models.train(
        model, train, None, ae_models.TrainConfig(epochs=3), [ae_models.ProgressBar(stream=stream)]
    )
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3 and lines[-1].startswith("[" + "#" * 30 + "] epoch 3/3")


def test_trimmed_loss_leaves_out_the_worst_rows() -> None:
    torch.manual_seed(0)
    model = ae_models.create_model("deep", input_dim=6, code_size=2, output="linear")
    x = torch.randn(10, 6)
    out = model(x)
    rows = model.row_reconstruction_loss(x, out)
    torch.testing.assert_close(rows.mean(), model.reconstruction_loss(x, out))
    torch.testing.assert_close(model.trimmed_loss(x, out, 0.0), model.loss(x, out))
    best8 = torch.sort(rows).values[:8].mean()
    torch.testing.assert_close(model.trimmed_loss(x, out, 0.2), best8)


def contaminated(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Rows near a 2-D plane in 12-D, and 8 % outliers scattered off it; the outlier mask."""
    rng = np.random.default_rng(seed)
    basis = rng.normal(size=(2, 12))
    normal = rng.normal(size=(920, 2)) @ basis + 0.05 * rng.normal(size=(920, 12))
    outliers = rng.normal(scale=2.0, size=(80, 12))
    x = np.vstack([normal, outliers]).astype(np.float32)
    return x, np.r_[np.zeros(920, bool), np.ones(80, bool)]


def test_trimming_keeps_the_outliers_from_pulling_the_fit() -> None:
    """Robust training: with the worst 10 % of each batch trimmed, the normal rows are fitted
    better (the outliers no longer pull the model), so the outliers stand out more."""
    x, outlier = contaminated()

    def errors(trim: float) -> tuple[float, float]:
        model = ae_models.create_model(
            "deep", input_dim=12, code_size=2, hidden=(32,), output="linear", seed=0
        )
        cfg = ae_models.TrainConfig(epochs=60, batch_size=50, trim_fraction=trim, seed=0)
        ae_models.train(model, x, None, cfg)
        _, mse, _ = ae_models.encode_and_score(model, x)
        return float(np.median(mse[~outlier])), float(np.median(mse[outlier]))

    (normal, odd), (normal_t, odd_t) = errors(0.0), errors(0.1)
    assert normal_t < 0.8 * normal, (normal, normal_t)
    assert odd_t / normal_t > 1.25 * odd / normal


@pytest.mark.parametrize(("rows", "epochs", "batch_size"), [(28, 2, 16), (5, 1, 16), (3, 3, 1)])
def test_one_cycle_on_a_handful_of_steps(rows, epochs, batch_size) -> None:
    # 2 epochs of 2 batches gave OneCycleLR a warm-up of no steps: ZeroDivisionError
    x = np.random.default_rng(0).random((rows, 8)).astype(np.float32)
    model = ae_models.create_model("deep", input_dim=8, code_size=2)
    cfg = ae_models.TrainConfig(epochs=epochs, batch_size=batch_size, patience=0)
    result = ae_models.train(model, x, None, cfg)
    assert len(result.history) == epochs and np.isfinite(result.history[-1]["train_loss"])
    steps_per_epoch = math.ceil(rows / batch_size)
    if epochs * steps_per_epoch < ONECYCLE_MIN_STEPS:  # no room for a schedule: constant
        assert [h["lr"] for h in result.history] == [cfg.lr] * epochs
        assert _make_scheduler(torch.optim.Adam(model.parameters()), cfg, steps_per_epoch) is None
        return
    # the schedule the run used, stepped alone: it warms up for at least one step, peaks at
    # the configured rate and anneals
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    scheduler = _make_scheduler(opt, cfg, steps_per_epoch)
    rates = [opt.param_groups[0]["lr"]]
    for _ in range(epochs * steps_per_epoch - 1):
        opt.step()
        scheduler.step()
        rates.append(opt.param_groups[0]["lr"])
    assert rates[1] > rates[0], rates  # at least one step of warm-up
    assert rates[0] < max(rates) <= cfg.lr and rates[-1] < max(rates)


def test_checkpoint_of_other_weight_shapes_is_not_resumed(digits, tmp_path, monkeypatch) -> None:
    """A default that changes between aepipe versions (the hidden widths did) leaves the
    config the same but the weights another shape: that checkpoint starts afresh instead of
    failing to load."""
    import ae_models.variants.deep

    train, val = digits
    cfg = ae_models.TrainConfig(epochs=2, batch_size=64, checkpoint_dir=str(tmp_path))
    monkeypatch.setattr(ae_models.variants.deep, "TABLE_HIDDEN", (32, 16))  # an older default
    ae_models.train(ae_models.create_model("deep", input_dim=64, code_size=8), train, val, cfg)
    monkeypatch.undo()
    result = ae_models.train(
        ae_models.create_model("deep", input_dim=64, code_size=8), train, val, cfg
    )
    assert result.resumed_from == 0 and len(result.history) == 2
