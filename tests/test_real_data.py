"""Every variant on real data: MNIST (IDX) and the UCI Adult table after ingest.

These need ``../shared/datasets`` and skip with a reason without it; the published-figure
targets are checked by ``benchmarks/mnist_quality.py``, not here.
"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

import ae_models
from flows.ingest import ingest_source
from tasks.config import build_config
from tasks.io.arrays import load_mnist
from tasks.io.splits import load_split_matrices
from tasks.normalize import normalize_dataset

VARIANTS = ["deep", "denoising", "sparse", "contractive", "vae", "conv"]


@pytest.fixture(scope="module")
def mnist(request) -> dict[str, np.ndarray]:
    shared = request.getfixturevalue("shared_datasets")
    x, y = load_mnist(shared / "mnist", "train")
    xt, yt = load_mnist(shared / "mnist", "test")
    return {"x": x, "y": y, "xt": xt, "yt": yt}


def test_mnist_reads_as_published(mnist) -> None:
    assert mnist["x"].shape == (60000, 784) and mnist["xt"].shape == (10000, 784)
    assert abs(mnist["x"].mean() - 33.318 / 255) < 1e-4
    assert abs(mnist["xt"].mean() - 33.791 / 255) < 1e-4


@pytest.mark.slow
def test_deep_codes_beat_pca16_on_full_mnist(mnist) -> None:
    # PCA with 16 components: test MSE 0.0269, logistic regression 85.7 % (datasets README)
    model = ae_models.create_model("deep", seed=0, input_dim=784, code_size=16, output="linear")
    cfg = ae_models.TrainConfig(epochs=12, batch_size=256, lr=3e-3, patience=0)
    ae_models.train(model, mnist["x"][:54000], mnist["x"][54000:], cfg)
    z_test, mse, _ = ae_models.encode_and_score(model, mnist["xt"])
    z_train, _, _ = ae_models.encode_and_score(model, mnist["x"])
    assert mse.mean() < 0.0269
    scaler = StandardScaler().fit(z_train)
    clf = LogisticRegression(max_iter=500).fit(scaler.transform(z_train), mnist["y"])
    assert clf.score(scaler.transform(z_test), mnist["yt"]) > 0.857


@pytest.mark.parametrize("name", VARIANTS)
def test_every_variant_trains_on_mnist(mnist, name) -> None:
    model = ae_models.create_model(name, seed=0, input_dim=784, code_size=16)
    cfg = ae_models.TrainConfig(epochs=2, batch_size=256, patience=0)
    result = ae_models.train(model, mnist["x"][:8000], mnist["x"][8000:9000], cfg)
    losses = [h[k] for h in result.history for k in ("train_loss", "val_loss")]
    assert np.isfinite(losses).all() and losses[-1] < 0.5
    codes, mse, _ = ae_models.encode_and_score(model, mnist["xt"][:500])
    assert np.isfinite(codes).all() and np.isfinite(mse).all()


@pytest.fixture(scope="module")
def adult_matrix(request, tmp_path_factory) -> np.ndarray:
    shared = request.getfixturevalue("shared_datasets")
    from stores import resolve_stores

    cfg = build_config(
        {
            "dataset": "adult",
            "source": {"path": str(shared / "adult" / "adult.data"), "label": "Salary"},
            "model": {"code_size": 8},
        }
    )
    st = resolve_stores(tmp_path_factory.mktemp("adult"))
    data = normalize_dataset(ingest_source(cfg, st), cfg)
    assert data.rows == 32561 and "Salary" not in data.features
    return load_split_matrices(data)["train"]


@pytest.mark.parametrize("name", VARIANTS)
def test_every_variant_trains_on_adult(adult_matrix, name) -> None:
    width = adult_matrix.shape[1]
    extra = {"image_shape": (1, width, 1)} if name == "conv" else {}
    model = ae_models.create_model(name, seed=0, input_dim=width, code_size=8, **extra)
    cfg = ae_models.TrainConfig(epochs=2, batch_size=256, patience=0)
    result = ae_models.train(model, adult_matrix[:8000], adult_matrix[8000:9000], cfg)
    losses = [h[k] for h in result.history for k in ("train_loss", "val_loss")]
    assert np.isfinite(losses).all()
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
