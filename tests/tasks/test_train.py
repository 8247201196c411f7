"""The train stage on edge-case data: tiny tables and one-wide codes still train and draw."""

from __future__ import annotations

from pathlib import Path

import pytest

from flows.ingest import ingest_source
from tasks.config import build_config
from tasks.normalize import normalize_dataset
from tasks.train import train_autoencoder


def test_tiny_table_with_a_one_wide_code(tmp_path, tmp_stores) -> None:
    csv = tmp_path / "t.csv"
    csv.write_text("a,b,c\n1,2,3\n4,5,6\n7,8,9\n10,11,12\n")
    cfg = build_config(
        {"source": {"path": str(csv)}, "model": {"code_size": 1}, "train": {"epochs": 2}}
    )
    data = normalize_dataset(ingest_source(cfg, tmp_stores), cfg)
    trained = train_autoencoder(data, cfg, tmp_stores)
    assert trained.code_size == 1 and trained.metrics["test_mse"] >= 0
    pictures = sorted(p.name for p in (tmp_path / "aepipe-home" / "models").rglob("*.png"))
    assert pictures == [
        "code_activations.png",
        "code_projection.png",
        "column_errors.png",  # a table: errors per source column, not a grid of "images"
        "loss_curves.png",
        "recon_scores.png",
    ]


def test_the_model_keeps_a_drift_reference(tmp_path, tmp_stores) -> None:
    """model.json carries what a later drift check needs: per source column a compact
    distribution, the held-out rows' calibrated scores, the codes' mean and covariance."""
    import numpy as np
    import pandas as pd

    import ae_models

    rng = np.random.default_rng(0)
    n = 600
    x = rng.normal(0, 1, n)
    pd.DataFrame(
        {"x": x, "y": 2 * x + rng.normal(0, 0.1, n), "kind": rng.choice(["p", "q"], n)}
    ).to_csv(tmp_path / "t.csv", index=False)
    cfg = build_config(
        {"source": {"path": str(tmp_path / "t.csv")}, "model": {"code_size": 2},
         "train": {"epochs": 2}}
    )  # fmt: skip
    data = normalize_dataset(ingest_source(cfg, tmp_stores), cfg)
    trained = train_autoencoder(data, cfg, tmp_stores)
    drift = ae_models.read_meta(trained.model_dir)["drift"]
    assert [(c["name"], c["kind"]) for c in drift["columns"]] == [
        ("x", "bins"),
        ("y", "bins"),
        ("kind", "levels"),
    ]
    assert len(drift["columns"][0]["expected"]) == 10  # deciles
    assert drift["rows"] == data.split_rows["train"]
    assert drift["score_rows"] == data.split_rows["test"]  # held out of training
    assert len(drift["score_quantiles"]) == 201 and 0 <= drift["flagged_rate"] <= 1
    assert len(drift["code_mean"]) == 2 and np.shape(drift["code_cov"]) == (2, 2)


@pytest.mark.parametrize(
    "train",
    [
        {"streaming": "always"},
        # two gloo processes, each importing torch: the slow tier (make test runs them)
        pytest.param({"strategy": "ddp", "processes": 2}, marks=pytest.mark.slow),
        pytest.param(
            {"strategy": "ddp", "processes": 2, "streaming": "always"}, marks=pytest.mark.slow
        ),
    ],
    ids=["streaming", "ddp", "ddp-streaming"],
)
def test_training_streams_or_runs_data_parallel_into_one_mlflow_run(
    tmp_path, tmp_stores, train
) -> None:
    """The train stage on the digits streamed from the normalized Parquet and/or over two
    gloo processes: one MLflow run with every epoch, a saved model as good as in-memory
    training's, measured on the rows themselves."""
    import mlflow

    settings = {"epochs": 6, "batch_size": 64, "patience": 0, "lr": 3e-3, "precision": "fp32"}
    base = build_config({"home": str(tmp_path / "aepipe-home"), "model": {"code_size": 8},
                         "train": settings})  # fmt: skip
    data = normalize_dataset(ingest_source(base, tmp_stores), base)
    plain = train_autoencoder(data, base, tmp_stores)
    cfg = build_config(
        {"home": str(tmp_path / "aepipe-home"), "model": {"code_size": 8},
         "train": settings | train}
    )  # fmt: skip
    trained = train_autoencoder(data, cfg, tmp_stores)
    run = mlflow.MlflowClient(tmp_stores.tracking_uri).get_run(trained.run_id)
    expected = "streamed" if train.get("streaming") == "always" else "in memory"
    assert run.data.tags["aepipe.rows"] == expected
    assert run.data.tags.get("aepipe.strategy") == train.get("strategy")
    history = mlflow.MlflowClient(tmp_stores.tracking_uri).get_metric_history(
        trained.run_id, "train_loss"
    )
    assert [m.step for m in history] == [1, 2, 3, 4, 5, 6]  # every epoch, in this run
    assert len(trained.history) == 6 and Path(trained.model_dir, "model.json").is_file()
    for key in ("test_mse", "codes_logreg_accuracy"):
        assert trained.metrics[key] == pytest.approx(plain.metrics[key], rel=0.25), key


def test_a_linear_head_scores_with_the_ensemble_and_keeps_its_files(tmp_path, tmp_stores) -> None:
    """Standard scaling (outputs outside [0, 1], a linear head): ``score: auto`` is the
    ensemble, as in the estimator (issue 26); the model folder keeps the training codes and
    the isolation forest, and the pyfunc that scores from it flags planted outliers."""
    import numpy as np
    import pandas as pd

    import ae_models
    from ae_models.scoring.detectors import CODES_FILE, FOREST_FILE, TAILS_FILE
    from tasks.pyfunc_model import AutoencoderPyfunc

    rng = np.random.default_rng(0)
    n = 600
    x = rng.normal(0, 1, n)
    frame = pd.DataFrame({"x": x, "y": 2 * x + rng.normal(0, 0.1, n), "w": rng.normal(0, 1, n)})
    frame.to_csv(tmp_path / "t.csv", index=False)
    cfg = build_config(
        {"source": {"path": str(tmp_path / "t.csv")}, "normalize": {"scaling": "standard"},
         "model": {"code_size": 2}, "train": {"epochs": 5}}
    )  # fmt: skip
    data = normalize_dataset(ingest_source(cfg, tmp_stores), cfg)
    trained = train_autoencoder(data, cfg, tmp_stores)
    folder = Path(trained.model_dir)
    assert ae_models.read_meta(folder)["score"]["kind"] == "ensemble"
    assert all((folder / name).is_file() for name in (CODES_FILE, FOREST_FILE, TAILS_FILE))
    model = AutoencoderPyfunc().load_folder(folder)
    odd = pd.DataFrame({"x": [0.0, 0.5], "y": [9.0, -8.0], "w": [0.0, 0.1]})  # y breaks y = 2x
    scored = model.predict(None, pd.concat([frame.head(200), odd], ignore_index=True))
    usual = scored["anomaly_score"].iloc[:200]
    assert (scored["anomaly_score"].iloc[200:] > usual.quantile(0.99)).all()
