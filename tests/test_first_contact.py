"""What a new user hits in the first hour (issue 17), on the real data sets where each was seen:
the UCI Adult table through the command (its main() in this process), the MNIST PNG sample.
Each test failed before its fix; they need ``../shared/datasets`` and skip with a reason
without it."""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import run_main

pytestmark = pytest.mark.slow  # trains on Adult: left out of `make test-fast`


@pytest.fixture(scope="module")
def adult_run(request, tmp_path_factory, prefect_server) -> dict:
    """``aepipe run`` on Adult with the defaults a README reader uses (only the label named,
    a short training), then ``aepipe score`` with only the flags that locate the data (the
    command's main() in this process: the console script itself is tests/test_cli.py's)."""
    shared = request.getfixturevalue("shared_datasets")
    cwd = tmp_path_factory.mktemp("adult-cli")
    home = cwd / "elsewhere"
    source = str(shared / "adult" / "adult.data")
    run = run_main(
        "run", "--source", source, "--label", "Salary", "--epochs", "12", "--home", str(home),
        cwd=cwd,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    score = run_main("score", "--source", source, "--label", "Salary", "--home", str(home), cwd=cwd)
    from feature_store import read_features

    return {
        "run": run,
        "score": score,
        "home": home,
        "features": read_features("adult", 1, home=home),
        "raw": __import__("pandas").read_csv(source, skipinitialspace=True),
    }


def test_default_code_size_follows_the_models_input_width(adult_run) -> None:
    """17.1: 14 source columns one-hot encode to 100 model inputs; the default code size is
    chosen for those 100 (16), not refused against the 14 source columns."""
    out = adult_run["run"].stdout
    assert "reduced 'adult' from 100 to 16 features" in out
    assert [c for c in adult_run["features"].columns if c.startswith("z_")][-1] == "z_15"


def test_explicit_code_size_is_checked_against_the_input_width(shared_datasets) -> None:
    """17.1: --code-size 50 is fine for Adult's 100 inputs; 100 is refused in one line that
    names the width after one-hot encoding."""
    from tasks.config import ConfigError, build_config
    from tasks.train import build_model
    from tasks.validate import validate_config

    source = {"path": str(shared_datasets / "adult" / "adult.data"), "label": "Salary"}
    cfg = build_config({"source": source, "model": {"code_size": 50}})
    validate_config(cfg)  # refused here before: 50 >= 14 source columns
    assert build_model(cfg, 100).config.code_size == 50
    too_wide = build_config({"source": source, "model": {"code_size": 100}})
    with pytest.raises(ConfigError, match=r"code_size 100 must be smaller than the model's input"):
        build_model(too_wide, 100)


def test_scoring_needs_only_what_locates_the_data(adult_run, tmp_path, aepipe_main) -> None:
    """17.2: ``aepipe score`` runs with the source and home alone, takes the model's settings
    from the champion, and offers no training flags."""
    score = adult_run["score"]
    assert score.returncode == 0, score.stderr[-3000:]
    assert "no new rows in the source (32561 rows" in score.stdout
    # issue 40.7: the report once (the flow no longer prints it into its log as well)
    assert (score.stdout + score.stderr).count("no new rows in the source") == 1
    refused = aepipe_main("score", "--code-size", "50", cwd=tmp_path)
    assert refused.returncode == 2 and "unrecognized arguments: --code-size" in refused.stderr


def test_top_columns_name_the_unusual_column_not_the_widest(adult_run) -> None:
    """17.3: a row with capital-gain 99999 is explained by capital-gain; wide one-hot columns
    (occupation, native-country) no longer top every row, nor the least anomalous rows (which
    listed the same three wide columns as every other row)."""
    feats = adult_run["features"].sort_values("entity_id", key=lambda s: s.astype(int))
    raw = adult_run["raw"]
    top = feats["top_columns"].map(list).to_numpy()
    rich = np.flatnonzero(raw["capital-gain"].to_numpy() == 99999)
    assert len(rich) > 100
    first = Counter(top[i][0] for i in rich)
    assert first["capital-gain"] / len(rich) > 0.9, first.most_common(3)
    top1 = Counter(t[0] for t in top)
    _, times = top1.most_common(1)[0]
    assert times / len(top) < 0.25, top1.most_common(4)  # occupation: 35 % before
    calm = Counter(c for t in feats.nsmallest(200, "anomaly_score")["top_columns"] for c in t)
    wide = {"occupation", "native-country", "education"}
    assert sum(calm[c] for c in wide) < 0.1 * 600, calm.most_common(5)


def test_summary_sets_each_figure_beside_its_trivial_baseline(adult_run) -> None:
    """17.5 and 17.8: the summary shows the trivial reconstruction and the majority class next
    to the model's figures, and its read-it lines carry the non-default home."""
    out = adult_run["run"].stdout
    assert "trivial baseline   MSE" in out and "(majority class 0.7" in out
    assert "codes -> label     logistic regression 0.8" in out
    assert "  label              'Salary': classes (2 values)" in out  # and no AUROC line
    assert "anomaly scores     AUROC" not in out
    home = adult_run["home"]
    assert f"read_features('adult', home='{home}')" in out
    assert f"features adult --home {home}" in out
    assert "WARNING" not in out


@pytest.fixture(scope="module")
def png_run(request, tmp_path_factory, prefect_server) -> dict:
    """``aepipe run`` on the 500-image PNG sample with the defaults (conv, as a user tries)."""
    shared = request.getfixturevalue("shared_datasets")
    cwd = tmp_path_factory.mktemp("png-cli")
    run = run_main(
        "run", "--source", str(shared / "mnist-png-sample"), "--model", "conv", "--epochs", "15",
        cwd=cwd,
    )  # fmt: skip
    return {"run": run, "home": cwd / ".aepipe"}


def test_small_data_gets_small_batches_and_a_model_that_learned(png_run) -> None:
    """17.5: 350 training images at 256 a batch made 2 steps an epoch and a conv model whose
    reconstructions were noise, crowned silently; the automatic batch size gives it enough
    steps to beat the trivial reconstruction, and the summary says by how much."""
    run = png_run["run"]
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    import mlflow

    from stores import resolve_stores

    mlflow.set_tracking_uri(resolve_stores(png_run["home"]).tracking_uri)
    runs = mlflow.search_runs(experiment_names=["aepipe-mnist_png_sample"])
    metrics = runs.iloc[0]
    assert metrics["metrics.recon_vs_baseline"] < 0.8, metrics.filter(like="metrics.")
    assert metrics["metrics.batch_size"] == 16  # 350 rows // 50 -> the 16-row floor
    assert "alias: champion" in run.stdout
    # an image folder end to end with the conv model: every image ingested and scored
    from feature_store import read_features

    assert metrics["params.model.name"] == "conv"  # its code size "auto": 16 for 784 inputs
    table = read_features("mnist_png_sample", home=png_run["home"])
    assert len(table) == 500 and table["entity_id"].str.endswith(".png").all()
    assert len([c for c in table.columns if c.startswith("z_")]) == 16


def test_a_model_that_learned_nothing_is_never_champion() -> None:
    """17.5: a model that reconstructs no better than the columns' means is refused, first
    version or not, with a reason that says so."""
    from tasks.register import nothing_learned
    from tasks.train import TrainedModel

    def trained(test: float, baseline: float) -> TrainedModel:
        metrics = {
            "test_bce": test,
            "baseline_bce": baseline,
            "recon_vs_baseline": test / baseline,
        }
        return TrainedModel(
            "m", "p", "r", "conv", 16, 1.0, metrics, [], "cpu", "fp32", loss="bce"
        )  # fmt: skip

    assert nothing_learned(trained(0.20, 0.30)) is None
    reason = nothing_learned(trained(0.31, 0.30))
    assert reason is not None and reason.startswith("not promoted: it learned nothing")
    assert "test BCE 0.31 is no better than predicting each column's training mean, 0.3" in reason


def test_summary_warns_loudly(tmp_path: Path) -> None:
    """17.5: codes no better than the majority class and chance-level anomaly scores are
    WARNING lines in the summary, not figures a reader has to compare."""
    from tasks.report import RunSummary

    summary = RunSummary(
        **{f: 0 for f in ("rows_ingested", "rows_quarantined", "features_in", "code_size")},
        **{f: 0 for f in ("model_version", "rows_written", "anomalies", "best_epoch")},
        **{f: 0.0 for f in ("test_mse", "test_bce", "train_seconds")},
        **{f: "x" for f in ("dataset", "model_name", "promotion", "device", "table", "run_id")},
        **{f: "x" for f in ("home", "warehouse", "prefect_ui", "mlflow_ui")},
        quarantine_path=None,
        aliases=["challenger"],
        pictures=[str(tmp_path / "loss_curves.png")],
        experiment_id="3",
        mlflow_url="http://127.0.0.1:5000",
        quality={
            "recon_vs_baseline": 1.02,
            "baseline_mse": 0.1,
            "baseline_bce": 0.3,
            "codes_logreg_accuracy": 0.762,
            "codes_5nn_accuracy": 0.70,
            "majority_accuracy": 0.762,
            "test_auroc": 0.43,
            "test_average_precision": 0.1,
        },
    )
    text = summary.to_text()
    assert text.count("WARNING") == 3
    assert "learned nothing and was not promoted" in text
    assert "does no better than always answering the majority class (0.762)" in text
    assert "AUROC 0.430; chance is 0.5" in text
    # issue 40.6: below chance is said to be inverted, not "about as well as chance"
    assert "mostly LAST: inverted" in text and "about as well as chance" not in text
    chance = dataclasses.replace(summary, quality={**summary.quality, "test_auroc": 0.52})
    assert "about as well as chance (AUROC 0.520" in chance.to_text()
    markdown = summary.to_markdown()
    assert "file://" not in markdown
    # issue 40.7: rounded figures named as in the table artifact, not raw floats and fields
    assert "| codes logreg accuracy | 0.762 |" in markdown and "rows_ingested" not in markdown
    assert "| rows ingested | 0 |" in markdown
    assert "](http://127.0.0.1:5000/get-artifact?path=plots/loss_curves.png&run_id=x)" in markdown
    assert "http://127.0.0.1:5000/#/experiments/3/runs/x" in markdown


def test_codes_written_carry_float32_precision(shared_datasets, monkeypatch) -> None:
    """17.4: on a CPU where training runs in bf16 (simulated here: the check that the CPU
    computes bf16 natively answers yes), the codes scored for the feature table are the fp32
    model's codes, not bf16-rounded ones: 10,000 MNIST rows got 793 distinct z_0 values."""
    import ae_models
    import ae_models.runtime
    from ae_models.outputs import score_outputs
    from ae_models.scoring.scorer import fit_scorer
    from tasks.io.arrays import load_mnist

    x, _ = load_mnist(shared_datasets / "mnist", "test")  # 10,000 x 784 in [0, 1]
    model = ae_models.create_model("deep", seed=0, input_dim=784, code_size=16)
    scorer, _ = fit_scorer(model, x[:2000])
    exact = ae_models.encode_and_score(model, x, precision="fp32")[0]
    monkeypatch.setattr(ae_models.runtime, "cpu_has_fast_bf16", lambda: True)
    assert ae_models.resolve_precision("auto", torch.device("cpu"), 784) == "bf16"  # as on AMX
    written = score_outputs(model, x, scorer, device="cpu")
    assert written.codes.dtype == np.float32
    assert len(np.unique(written.codes[:, 0])) > 5000  # bf16: 7 on this untrained model
    np.testing.assert_array_equal(written.codes, exact)
