"""Quality on the full MNIST split against the published figures, for every variant.

Trains on the 60,000 training images (54,000 fit + 6,000 validation) and measures on the
10,000 test images. Targets come from the published deep autoencoder (784-256-128-64-32-16,
Adam, 100 epochs: linear + MSE 0.0145 test, sigmoid + BCE 0.0950 test) and from PCA with 16
components (logistic regression 85.7 %, 5-NN 96.3 %). Writes pictures to benchmarks/out/.

    .venv/bin/python benchmarks/mnist_quality.py            # about 8 minutes on 2 CPU cores
    .venv/bin/python benchmarks/mnist_quality.py --estimator  # the estimator's defaults only

``--estimator`` checks the published model as a user of the estimator writes it,
``AutoencoderReducer(model="deep", code_size=16, loss="mse", epochs=100)`` with every other
default (the anomaly defaults included), against the same bars.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parents[1]))

import ae_models  # noqa: E402
from benchmarks.common import require_dataset, target  # noqa: E402
from tasks.io.arrays import load_mnist  # noqa: E402

OUT = HERE.parent / "out"


def fit(name: str, x: np.ndarray, epochs: int, lr: float, **kwargs) -> tuple:
    model = ae_models.create_model(name, seed=0, input_dim=784, code_size=16, **kwargs)
    cfg = ae_models.TrainConfig(epochs=epochs, batch_size=256, lr=lr, patience=0)
    t0 = time.perf_counter()
    result = ae_models.train(model, x[:54000], x[54000:], cfg)
    print(
        f"  {name} {kwargs or ''}: {epochs} epochs in {time.perf_counter() - t0:.0f} s "
        f"({result.samples_per_second:.0f} samples/s, {result.precision})",
        flush=True,
    )
    return model, result


def code_accuracy(model, x, y, xt, yt) -> tuple[float, float]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.preprocessing import StandardScaler

    z, _, _ = ae_models.encode_and_score(model, x)
    zt, _, _ = ae_models.encode_and_score(model, xt)
    scaler = StandardScaler().fit(z)
    z, zt = scaler.transform(z), scaler.transform(zt)
    lr = LogisticRegression(max_iter=2000).fit(z, y).score(zt, yt)
    knn = KNeighborsClassifier(5).fit(z, y).score(zt, yt)
    return lr, knn


def estimator_defaults(x, y, xt, yt) -> None:
    """The published model through the estimator with its defaults: test MSE, logistic
    regression and 5-NN on the 16-d codes, one TARGET line each."""
    t0 = time.perf_counter()
    est = ae_models.AutoencoderReducer(model="deep", code_size=16, loss="mse", epochs=100)
    est.fit(x)
    print(f"estimator: {len(est.history_)} epochs in {time.perf_counter() - t0:.0f} s")
    mse = float(((est.inverse_transform(est.transform(xt)) - xt) ** 2).mean())
    lr_acc, knn_acc = code_accuracy(est.model_, x, y, xt, yt)
    print(f"  test MSE {mse:.4f}  logistic regression {lr_acc:.2%}  5-NN {knn_acc:.2%}")
    print(target("mnist_estimator_test_mse", mse, 0.0145, False, "{:.4f}"))
    print(target("mnist_estimator_logreg_acc", lr_acc, 0.92, fmt="{:.4f}"))
    print(target("mnist_estimator_5nn_acc", knn_acc, 0.965, fmt="{:.4f}"))


def save_grid(images: np.ndarray, path: Path, cols: int = 10) -> None:
    from PIL import Image

    rows = int(np.ceil(len(images) / cols))
    grid = np.ones((rows * 30, cols * 30), np.float32)
    for i, img in enumerate(images):
        r, c = divmod(i, cols)
        grid[r * 30 + 1 : r * 30 + 29, c * 30 + 1 : c * 30 + 29] = img.reshape(28, 28)
    Image.fromarray((grid * 255).astype(np.uint8)).resize((cols * 90, rows * 90)).save(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mse-epochs", type=int, default=150)
    parser.add_argument("--bce-epochs", type=int, default=100)
    parser.add_argument("--variant-epochs", type=int, default=30)
    parser.add_argument("--estimator", action="store_true", help="the estimator's defaults")
    args = parser.parse_args()
    folder = require_dataset("mnist")
    x, y = load_mnist(folder, "train")
    xt, yt = load_mnist(folder, "test")
    if args.estimator:
        estimator_defaults(x, y, xt, yt)
        return
    OUT.mkdir(exist_ok=True)
    lines: list[str] = []

    print("deep, linear + MSE", flush=True)
    lin, _ = fit("deep", x, args.mse_epochs, 5e-3, output="linear")
    _, mse, _ = ae_models.encode_and_score(lin, xt)
    _, mse_train, _ = ae_models.encode_and_score(lin, x)
    lr_acc, knn_acc = code_accuracy(lin, x, y, xt, yt)
    print(
        f"  train MSE {mse_train.mean():.4f}  test MSE {mse.mean():.4f}  "
        f"logistic regression {lr_acc:.2%}  5-NN {knn_acc:.2%}"
    )
    lines.append(target("mnist_linear_test_mse", float(mse.mean()), 0.0145, False, "{:.4f}"))
    lines.append(target("mnist_linear_test_mse_goal", float(mse.mean()), 0.0120, False, "{:.4f}"))
    lines.append(target("mnist_codes_logreg_acc", lr_acc, 0.92, fmt="{:.4f}"))
    lines.append(target("mnist_codes_5nn_acc", knn_acc, 0.965, fmt="{:.4f}"))
    lines.append(target("mnist_codes_5nn_acc_goal", knn_acc, 0.975, fmt="{:.4f}"))

    print("deep, sigmoid + BCE", flush=True)
    sig, _ = fit("deep", x, args.bce_epochs, 6e-3)
    _, _, bce = ae_models.encode_and_score(sig, xt)
    _, _, bce_train = ae_models.encode_and_score(sig, x)
    print(f"  train BCE {bce_train.mean():.4f}  test BCE {bce.mean():.4f}")
    lines.append(target("mnist_sigmoid_test_bce", float(bce.mean()), 0.0950, False, "{:.4f}"))

    import torch

    print("denoising vs plain on test images + N(0, 0.3^2) noise", flush=True)
    den, _ = fit("denoising", x, args.variant_epochs, 6e-3, noise="gaussian", noise_level=0.3)
    gen = torch.Generator().manual_seed(0)
    clean = torch.from_numpy(xt)
    noisy = (clean + 0.3 * torch.randn(clean.shape, generator=gen)).clamp(0, 1)
    with torch.no_grad():
        err_den = float((den.eval()(noisy).recon - clean).pow(2).mean())
        err_plain = float((sig.eval()(noisy).recon - clean).pow(2).mean())
        save_grid(
            torch.cat(
                [clean[:10], noisy[:10], sig(noisy[:10]).recon, den(noisy[:10]).recon]
            ).numpy(),
            OUT / "denoising.png",
        )
    print(f"  MSE to the clean image: denoising {err_den:.4f}, plain {err_plain:.4f}")
    lines.append(
        target("mnist_denoising_vs_plain_mse_ratio", err_den / err_plain, 1.0, False, "{:.3f}")
    )

    print("sparse (L1 on a ReLU code) vs the same model without the penalty", flush=True)
    dense, _ = fit("sparse", x, args.variant_epochs, 6e-3, weight=0.0)
    sparse, _ = fit("sparse", x, args.variant_epochs, 6e-3, weight=1e-3)
    z_dense, mse_dense, _ = ae_models.encode_and_score(dense, xt)
    z_sparse, mse_sparse, _ = ae_models.encode_and_score(sparse, xt)
    print(
        f"  mean code activation: unregularized {z_dense.mean():.3f} (test MSE "
        f"{mse_dense.mean():.4f}), sparse {z_sparse.mean():.3f} (test MSE "
        f"{mse_sparse.mean():.4f}); share of zero units {np.mean(z_dense == 0):.0%} vs "
        f"{np.mean(z_sparse == 0):.0%}"
    )
    lines.append(
        target(
            "mnist_sparse_mean_activation_ratio",
            float(z_sparse.mean() / z_dense.mean()),
            0.25,
            False,
            "{:.3f}",
        )
    )

    print("vae: samples", flush=True)
    vae, _ = fit("vae", x, args.variant_epochs, 3e-3)
    samples = vae.eval().sample(100, generator=torch.Generator().manual_seed(0))
    save_grid(samples.numpy(), OUT / "vae_samples.png")
    _, mse_vae, _ = ae_models.encode_and_score(vae, xt)
    print(
        f"  test MSE (posterior mean) {mse_vae.mean():.4f}; 100 samples in "
        f"{OUT / 'vae_samples.png'}"
    )

    for name, epochs in (
        ("contractive", max(args.variant_epochs // 3, 1)),
        ("conv", max(args.variant_epochs // 3, 1)),
    ):
        print(name, flush=True)
        model, result = fit(name, x, epochs, 3e-3)
        _, m, b = ae_models.encode_and_score(model, xt)
        finite = all(np.isfinite(h["train_loss"]) for h in result.history)
        print(f"  test MSE {m.mean():.4f}  test BCE {b.mean():.4f}  finite losses: {finite}")

    with torch.no_grad():
        save_grid(
            torch.cat([clean[:10], sig(clean[:10]).recon]).numpy(), OUT / "reconstructions.png"
        )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
