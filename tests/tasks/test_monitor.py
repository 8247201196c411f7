"""Where a drift check goes when part of the way is down, and how it reads as metrics."""

from __future__ import annotations

import logging

from ae_models.scoring.drift import DriftCheck
from feature_store import read_drift
from tasks.monitor import drift_metrics, record_check
from tasks.scoring_job import ScoringJob

CHECK = DriftCheck(
    rows=500,
    checked=True,
    drifted=True,
    score_p_value=1e-6,
    score_ks=0.3,
    flagged_rate=0.12,
    expected_rate=0.01,
    rate_p_value=1e-9,
    code_p_value=0.4,
    psi={"amount": 0.41, "ship:to": 0.02},
    drifted_columns=["amount"],
    score_histogram=[0.05] * 20,
    reference_histogram=[0.05] * 20,
)


def test_metrics_name_every_column_with_a_valid_key() -> None:
    metrics = drift_metrics(CHECK)
    assert metrics["drift_detected"] == 1.0 and metrics["max_psi"] == 0.41
    assert metrics["psi/amount"] == 0.41 and metrics["psi/ship_to"] == 0.02
    unchecked = drift_metrics(DriftCheck(50, False, "50 rows, fewer than the 200"))
    assert unchecked == {"drift_rows": 50.0, "drift_detected": 0.0}


def test_a_check_is_recorded_when_mlflow_cannot_take_it(tmp_stores, caplog) -> None:
    """The features are committed before the check is kept: a tracking store that fails
    costs the monitoring run's metrics and a warning, never the drift table's row."""
    broken = tmp_stores.model_copy(update={"tracking_uri": "sqlite:////proc/no-such/mlflow.db"})
    job = ScoringJob("orders", "", "", "aepipe-orders", 1, "run-1", broken, "append")
    with caplog.at_level(logging.WARNING):
        record_check(CHECK, job)
    history = read_drift("orders", home=broken)
    assert list(history["drifted"]) == [True] and list(history["rows"]) == [500]
    assert "recorded in the drift table, but not on the MLflow monitoring run" in caplog.text


def test_the_score_histogram_is_an_svg_a_browser_opens(tmp_path) -> None:
    from xml.dom import minidom

    from tasks.evaluation.plots import drift_histogram

    path = drift_histogram(CHECK, "orders <v1> & more", tmp_path / "scores.svg")
    svg = minidom.parse(str(path)).documentElement  # well-formed, the title escaped
    assert svg.tagName == "svg" and svg.getAttribute("xmlns") == "http://www.w3.org/2000/svg"
    assert len(svg.getElementsByTagName("rect")) >= 20  # a bar a bin
    assert "DRIFT" in path.read_text() and "orders &lt;v1&gt; &amp; more" in path.read_text()
