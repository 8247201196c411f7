"""Downstream metrics logged with each run: classifiers on codes, anomaly detection."""

from __future__ import annotations

import numpy as np

from tasks.evaluation.metrics import (
    anomaly_metrics,
    code_metrics,
    is_anomaly_label,
    is_classification_label,
)


def test_label_kinds() -> None:
    assert is_anomaly_label(np.array([0, 1, 0])) and is_anomaly_label(np.array([True, False]))
    assert not is_anomaly_label(np.array([0, 0])) and not is_anomaly_label(np.array(["a", "b"]))
    assert is_classification_label(np.array(["<=50K", ">50K"]))
    assert not is_classification_label(np.arange(1000))


def test_code_metrics_on_separable_codes() -> None:
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], 100)
    z = rng.normal(size=(300, 4)) + y[:, None] * 5
    got = code_metrics(z[::2], y[::2], z[1::2], y[1::2])
    assert got == {"codes_logreg_accuracy": 1.0, "codes_5nn_accuracy": 1.0}


def test_anomaly_metrics() -> None:
    y = np.array([0] * 90 + [1] * 10)
    perfect = anomaly_metrics(y.astype(float), y)
    assert perfect == {"test_auroc": 1.0, "test_average_precision": 1.0}
    inverted = anomaly_metrics(1.0 - y, y)
    assert inverted["test_auroc"] == 0.0
    assert anomaly_metrics(np.zeros(5), np.zeros(5)) == {}
