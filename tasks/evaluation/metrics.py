"""What a trained model is worth downstream: classifiers on its codes, anomaly detection."""

from __future__ import annotations

import numpy as np

MAX_CLASSES = 50


def is_classification_label(y: np.ndarray) -> bool:
    """Labels a classifier can use: few distinct values."""
    return len(y) > 0 and len(np.unique(y.astype(str))) <= MAX_CLASSES


def is_anomaly_label(y: np.ndarray) -> bool:
    """Labels that mark anomalies: 0/1 (or booleans) with both values present."""
    try:
        values = set(np.unique(y.astype(float)).tolist())
    except (TypeError, ValueError):
        return False
    return values == {0.0, 1.0}


MAX_ANOMALY_SHARE = 0.2  # auto: a 0/1 label with more ones than this is a class label


def read_label(y: np.ndarray, kind: str, name: str) -> tuple[str, str]:
    """What the label ``name`` (values ``y``) is taken as, and one line saying so: "anomaly"
    (AUROC and AP of the scores), "class" (the codes' downstream accuracies) or "none".
    ``kind`` is ``source.label_kind``: ``auto`` reads a 0/1 label with at most 20 % ones as
    anomalies and any other label of few values as classes."""
    binary = is_anomaly_label(y)
    share = float(np.mean(y.astype(float) == 1.0)) if binary else 0.0
    if kind == "anomaly":
        if binary:
            return "anomaly", f"{name}: anomalies (source.label_kind), {share:.1%} ones"
        return "none", f"{name}: source.label_kind is anomaly, but it is not 0/1: no figures"
    if kind == "auto" and binary and share <= MAX_ANOMALY_SHARE:
        return "anomaly", (
            f"{name}: 0/1 with {share:.1%} ones, read as anomalies "
            "(source.label_kind: class reads it as classes)"
        )
    if is_classification_label(y):
        if kind == "class":
            return "class", f"{name}: classes (source.label_kind)"
        if binary:
            return "class", (
                f"{name}: 0/1 with {share:.1%} ones, more than {MAX_ANOMALY_SHARE:.0%}: read "
                "as classes (source.label_kind: anomaly reads it as anomaly marks)"
            )
        return "class", f"{name}: classes ({len(np.unique(y.astype(str)))} values)"
    return "none", f"{name}: too many distinct values for classes or anomalies"


def code_metrics(
    z_train: np.ndarray, y_train: np.ndarray, z_test: np.ndarray, y_test: np.ndarray
) -> dict[str, float]:
    """Test accuracy of logistic regression and 5-nearest-neighbours on standardized codes."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.preprocessing import StandardScaler

    y_train, y_test = y_train.astype(str), y_test.astype(str)
    if len(np.unique(y_train)) < 2 or len(z_test) == 0:
        return {}
    scaler = StandardScaler().fit(z_train)
    a, b = scaler.transform(z_train), scaler.transform(z_test)
    logreg = LogisticRegression(max_iter=1000).fit(a, y_train).score(b, y_test)
    knn = KNeighborsClassifier(n_neighbors=min(5, len(a))).fit(a, y_train).score(b, y_test)
    values, counts = np.unique(y_train, return_counts=True)
    majority = float((y_test == values[counts.argmax()]).mean())  # the trivial classifier
    return {
        "codes_logreg_accuracy": float(logreg),
        "codes_5nn_accuracy": float(knn),
        "majority_accuracy": majority,
    }


def baseline_reconstruction(x_train: np.ndarray, x_eval: np.ndarray) -> dict[str, float]:
    """Errors of the trivial reconstruction, each column's training mean for every row: a
    model that does not beat it has learned nothing about the rows."""
    mean = x_train.astype(np.float64).mean(axis=0)
    x = x_eval.astype(np.float64)
    mse = float(np.mean(np.square(x - mean))) if len(x) else float("nan")
    p = np.clip(mean, 1e-7, 1 - 1e-7)
    t = np.clip(x, 0.0, 1.0)
    bce = float(np.mean(-(t * np.log(p) + (1 - t) * np.log1p(-p)))) if len(x) else float("nan")
    return {"baseline_mse": mse, "baseline_bce": bce}


def anomaly_metrics(scores: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """AUROC and average precision of reconstruction scores against 0/1 anomaly labels."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    y = y.astype(float).astype(int)
    if len(np.unique(y)) < 2:
        return {}
    return {
        "test_auroc": float(roc_auc_score(y, scores)),
        "test_average_precision": float(average_precision_score(y, scores)),
    }
