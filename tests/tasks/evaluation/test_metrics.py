"""Downstream metrics logged with each run: classifiers on codes, anomaly detection."""

from __future__ import annotations

import numpy as np
import pytest

from tasks.evaluation.metrics import (
    anomaly_metrics,
    baseline_reconstruction,
    code_metrics,
    is_anomaly_label,
    is_classification_label,
    read_label,
)


def test_label_kinds() -> None:
    assert is_anomaly_label(np.array([0, 1, 0])) and is_anomaly_label(np.array([True, False]))
    assert not is_anomaly_label(np.array([0, 0])) and not is_anomaly_label(np.array(["a", "b"]))
    assert is_classification_label(np.array(["<=50K", ">50K"]))
    assert not is_classification_label(np.arange(1000))


def test_a_label_means_what_the_user_says() -> None:
    """Issue 40.6: any 0/1 label was read as anomaly marks (a churn label got an AUROC and a
    warning; two image folders 0/ and 1/ an "about chance" line). Now auto reads 0/1 with
    at most 20 % ones as anomalies and says so; the rest are classes; the setting decides."""
    rare = np.array([1] * 5 + [0] * 95)
    churn = np.array([1] * 27 + [0] * 73)
    kind, note = read_label(rare, "auto", "'Class'")
    assert kind == "anomaly" and note.startswith("'Class': 0/1 with 5.0% ones, read as anomal")
    kind, note = read_label(churn, "auto", "'churned'")
    assert kind == "class" and "0/1 with 27.0% ones, more than 20%: read as classes" in note
    assert read_label(np.arange(10).repeat(3), "auto", "x") == ("class", "x: classes (10 values)")
    assert read_label(churn, "anomaly", "churned")[0] == "anomaly"
    assert read_label(rare, "class", "Class")[0] == "class"
    assert read_label(np.array(["a", "b", "c"]), "anomaly", "y")[0] == "none"
    assert read_label(np.arange(5000), "auto", "id")[0] == "none"


def test_code_metrics_on_separable_codes() -> None:
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], 100)
    z = rng.normal(size=(300, 4)) + y[:, None] * 5
    got = code_metrics(z[::2], y[::2], z[1::2], y[1::2])
    assert got == {
        "codes_logreg_accuracy": 1.0,
        "codes_5nn_accuracy": 1.0,
        "majority_accuracy": pytest.approx(1 / 3, abs=0.01),  # the trivial classifier
    }


def test_baseline_reconstruction_predicts_the_training_means() -> None:
    x_train = np.array([[0.0, 1.0], [1.0, 1.0]], np.float32)
    x_eval = np.array([[1.0, 1.0]], np.float32)
    got = baseline_reconstruction(x_train, x_eval)
    assert got["baseline_mse"] == pytest.approx(0.125)  # (1 - 0.5)^2 / 2 columns
    # column 0: -log(0.5); column 1: the mean 1.0 is clipped to 1 - 1e-7, -log(1 - 1e-7)
    assert got["baseline_bce"] == pytest.approx((np.log(2) + 1e-7) / 2, rel=1e-5)


def test_anomaly_metrics() -> None:
    y = np.array([0] * 90 + [1] * 10)
    perfect = anomaly_metrics(y.astype(float), y)
    assert perfect == {"test_auroc": 1.0, "test_average_precision": 1.0}
    inverted = anomaly_metrics(1.0 - y, y)
    assert inverted["test_auroc"] == 0.0
    assert anomaly_metrics(np.zeros(5), np.zeros(5)) == {}
