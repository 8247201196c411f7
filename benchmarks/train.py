"""Training speed: Keras 3 (the published code path) vs a plain PyTorch loop vs aepipe.

Same model (784-256-128-64-32-16 encoder, mirrored decoder, sigmoid + BCE, Adam), same MNIST
training data, one fresh process per contender. Prints samples/s, ratios, the share of this
machine's matrix-multiply peak aepipe reaches, and aepipe's time to test BCE 0.0950 against
the published 100 Keras epochs priced at Keras's measured seconds per epoch.

    .venv/bin/pip install -c constraints.txt -e ".[bench]"   # Keras, for the published path
    .venv/bin/python benchmarks/train.py
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parents[1]))

from benchmarks.common import require_dataset, run_worker, target  # noqa: E402

WIDTHS = (784, 256, 128, 64, 32, 16)
TARGET_BCE = 0.0950
PUBLISHED_EPOCHS = 100


def train_flops_per_sample() -> float:
    """Multiply-adds of forward + backward (about 3x forward) for one sample, as FLOPs."""
    macs = 2 * sum(a * b for a, b in itertools.pairwise(WIDTHS))
    return 3 * 2 * macs


def load_x() -> tuple:
    from tasks.io.arrays import load_mnist

    folder = require_dataset("mnist")
    return load_mnist(folder, "train")[0], load_mnist(folder, "test")[0]


def worker_keras(batch: int, epochs: int) -> dict:
    import os

    os.environ.setdefault("KERAS_BACKEND", "torch")
    import keras

    x, _ = load_x()
    layers = [keras.Input((784,))]
    for w in WIDTHS[1:]:
        layers.append(keras.layers.Dense(w, activation="relu"))
    for w in WIDTHS[-2:0:-1]:
        layers.append(keras.layers.Dense(w, activation="relu"))
    layers.append(keras.layers.Dense(784, activation="sigmoid"))
    model = keras.Sequential(layers)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="binary_crossentropy")
    times: list[float] = []

    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.t0 = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            times.append(time.perf_counter() - self.t0)

    model.fit(x, x, batch_size=batch, epochs=epochs, verbose=0, callbacks=[Timer()])
    best = min(times[1:] or times)
    return {"samples_per_s": len(x) / best, "epoch_s": best}


def worker_plain(batch: int, epochs: int) -> dict:
    import torch
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(0)
    x, _ = load_x()
    xt = torch.from_numpy(x)
    dims = (*WIDTHS, *WIDTHS[-2::-1])
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(dims)):
        layers.append(nn.Linear(a, b))
        layers.append(nn.ReLU() if i < len(dims) - 2 else nn.Sigmoid())
    model = nn.Sequential(*layers)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    loss_fn = nn.BCELoss()
    loader = DataLoader(TensorDataset(xt), batch_size=batch, shuffle=True)
    times = []
    for _ in range(epochs):
        t0 = time.perf_counter()
        for (xb,) in loader:
            loss = loss_fn(model(xb), xb)
            opt.zero_grad()
            loss.backward()
            opt.step()
        times.append(time.perf_counter() - t0)
    best = min(times[1:] or times)
    return {"samples_per_s": len(x) / best, "epoch_s": best}


def worker_aepipe(batch: int, epochs: int) -> dict:
    import ae_models

    x, _ = load_x()
    model = ae_models.create_model("deep", seed=0, input_dim=784, code_size=16)
    cfg = ae_models.TrainConfig(epochs=epochs, batch_size=batch, lr=1e-3, patience=0)
    result = ae_models.train(model, x, None, cfg)
    best = min(h["train_seconds"] for h in result.history[1:] or result.history)
    return {"samples_per_s": len(x) / best, "epoch_s": best, "precision": result.precision}


def worker_matmul() -> dict:
    import torch

    out = {}
    n = 4096
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        a @ b
        reps, t0 = 5, time.perf_counter()
        for _ in range(reps):
            a @ b
        out[name] = 2 * n**3 * reps / (time.perf_counter() - t0)
    return out


def worker_quality(batch: int, epochs: int, lr: float) -> dict:
    """Train aepipe's default loop and record wall time until test BCE <= TARGET_BCE."""
    import ae_models

    x, x_test = load_x()
    model = ae_models.create_model("deep", seed=0, input_dim=784, code_size=16)
    start = time.perf_counter()
    reached: dict[str, float] = {}
    probe = [0.0]  # seconds spent measuring test BCE: not training time, subtracted

    class TestBCE:
        def on_epoch_end(self, epoch: int, logs: dict) -> None:
            if reached:
                return
            t0 = time.perf_counter()
            _, _, bce = ae_models.encode_and_score(model, x_test)
            model.train()
            probe[0] += time.perf_counter() - t0
            if float(bce.mean()) <= TARGET_BCE:
                seconds = time.perf_counter() - start - probe[0]
                reached.update(epoch=epoch, seconds=seconds, bce=float(bce.mean()))

    cfg = ae_models.TrainConfig(epochs=epochs, batch_size=batch, lr=lr, patience=0)
    ae_models.train(model, x[:54000], x[54000:], cfg, callbacks=[TestBCE()])
    _, _, bce = ae_models.encode_and_score(model, x_test)
    return {
        "reached": reached,
        "final_bce": float(bce.mean()),
        "total_s": time.perf_counter() - start,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", nargs="*", help=argparse.SUPPRESS)
    parser.add_argument("--epochs", type=int, default=3, help="epochs per throughput timing")
    parser.add_argument("--quality-epochs", type=int, default=100)
    parser.add_argument("--quality-lr", type=float, default=6e-3)
    parser.add_argument("--skip-keras", action="store_true")
    args = parser.parse_args()
    if args.worker is not None:
        kind, *rest = args.worker
        fns = {"keras": worker_keras, "plain": worker_plain, "aepipe": worker_aepipe}
        if kind == "matmul":
            result = worker_matmul()
        elif kind == "quality":
            result = worker_quality(int(rest[0]), int(rest[1]), float(rest[2]))
        else:
            result = fns[kind](int(rest[0]), int(rest[1]))
        print(json.dumps(result))
        return

    require_dataset("mnist")
    ep = str(args.epochs)
    rows = {}
    if not args.skip_keras:
        rows["keras bs32 (Keras default)"] = run_worker(HERE, "keras", "32", "2")
        rows["keras bs256"] = run_worker(HERE, "keras", "256", ep)
    rows["plain torch DataLoader bs256"] = run_worker(HERE, "plain", "256", ep)
    rows["aepipe bs256"] = run_worker(HERE, "aepipe", "256", ep)
    peak = run_worker(HERE, "matmul")
    print(f"{'contender':34s} {'samples/s':>10s} {'s/epoch':>8s}")
    for name, r in rows.items():
        print(f"{name:34s} {r['samples_per_s']:10.0f} {r['epoch_s']:8.2f}")
    ours = rows["aepipe bs256"]["samples_per_s"]
    plain = rows["plain torch DataLoader bs256"]["samples_per_s"]
    flops = train_flops_per_sample() * ours
    print(f"aepipe precision: {rows['aepipe bs256'].get('precision')}")
    print(
        f"matmul peak: fp32 {peak['fp32'] / 1e9:.0f} GFLOP/s, bf16 {peak['bf16'] / 1e9:.0f} "
        f"GFLOP/s; aepipe trains at {flops / 1e9:.0f} GFLOP/s = "
        f"{flops / peak['fp32']:.0%} of fp32 peak, {flops / peak['bf16']:.0%} of bf16 peak"
    )
    print(f"ratio aepipe / plain loop: {ours / plain:.2f}x")

    quality = run_worker(HERE, "quality", "256", str(args.quality_epochs), str(args.quality_lr))
    reached = quality["reached"]
    print(
        f"aepipe to test BCE {TARGET_BCE}: "
        + (
            f"epoch {reached['epoch']}, {reached['seconds']:.0f} s (BCE {reached['bce']:.4f})"
            if reached
            else f"not reached; final BCE {quality['final_bce']:.4f}"
        )
    )
    lines = []
    if not args.skip_keras:
        keras256 = rows["keras bs256"]["samples_per_s"]
        budget = rows["keras bs32 (Keras default)"]["epoch_s"] * PUBLISHED_EPOCHS
        print(f"ratio aepipe / keras bs256: {ours / keras256:.2f}x")
        print(f"published path: {PUBLISHED_EPOCHS} Keras epochs at bs32 = {budget:.0f} s")
        lines.append(target("train_speed_vs_keras_bs256", ours / keras256, 2.0, fmt="{:.2f}"))
        seconds = reached.get("seconds", float("inf"))
        lines.append(
            target(
                "time_to_bce_0.0950_fraction_of_keras_100_epochs",
                seconds / budget,
                1 / 20,
                higher_is_better=False,
                fmt="{:.4f}",
            )
        )
    lines.append(target("train_speed_vs_plain_loop_bs256", ours / plain, 1.5, fmt="{:.2f}"))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
