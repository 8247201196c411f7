"""The main flow end to end on the digits: real Prefect server, MLflow on SQLite, Iceberg."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from feature_store import read_features
from flows.reduce_features import reduce_features
from tasks.config import build_config

pytestmark = pytest.mark.slow


def config(home, epochs: int):
    return build_config(
        {
            "home": str(home),
            "model": {"code_size": 8},
            "train": {"epochs": epochs, "batch_size": 64, "patience": 0},
        }
    )


@pytest.fixture
def two_runs(prefect_server, home):
    """Two runs on the same data: a short one, then a longer (better) one."""
    first = reduce_features(config(home, epochs=2))
    second = reduce_features(config(home, epochs=25))
    return first, second


def test_feature_table_and_registry_after_two_runs(two_runs, home, tmp_stores) -> None:
    import mlflow

    first, second = two_runs
    assert (first.model_version, second.model_version) == (1, 2)
    assert first.rows_ingested == 1797 and first.rows_written == 1797
    assert first.aliases == ["champion"] and second.aliases == ["champion"]
    assert second.test_mse < first.test_mse

    v1 = read_features("digits", 1, home=home)
    v2 = read_features("digits", 2, home=home)
    champion = read_features("digits", home=home)  # default: the champion
    assert len(v1) == len(v2) == 1797
    assert not v1["entity_id"].duplicated().any() and not v2["entity_id"].duplicated().any()
    assert set(champion["model_version"]) == {2}
    assert len(read_features("digits", None, home=home)) == 2 * 1797

    expected = [
        "entity_id",
        "event_timestamp",
        *[f"z_{i}" for i in range(8)],
        "recon_error",
        "is_anomaly",
        "model_name",
        "model_version",
        "run_id",
        "scored_at",
    ]
    assert list(v2.columns) == expected
    assert v2["z_0"].dtype == np.float32 and v2["recon_error"].dtype == np.float32
    assert v2["is_anomaly"].dtype == bool and v2["model_version"].dtype == np.int64
    assert np.isfinite(v2[[f"z_{i}" for i in range(8)] + ["recon_error"]].to_numpy()).all()
    assert set(v2["run_id"]) == {second.run_id}
    assert str(v2["event_timestamp"].dtype) == "datetime64[us, UTC]"
    # the threshold is the training-score quantile, so a small share is flagged
    assert 0 < v2["is_anomaly"].sum() < 0.05 * len(v2)

    client = mlflow.MlflowClient(tmp_stores.tracking_uri, tmp_stores.tracking_uri)
    mv = client.get_model_version_by_alias("aepipe-digits", "champion")
    assert int(mv.version) == 2
    assert mv.tags["promotion.decision"] == "promoted"
    assert mv.tags["promotion.champion_version"] == "1"
    run = client.get_run(second.run_id)
    assert run.data.params["train.epochs"] == "25"
    assert run.data.metrics["test_mse"] == pytest.approx(second.test_mse)
    assert len(client.get_metric_history(second.run_id, "val_loss")) == 25


def test_champion_pyfunc_scores_raw_rows(two_runs, home, tmp_stores) -> None:
    import mlflow

    mlflow.set_tracking_uri(tmp_stores.tracking_uri)
    model = mlflow.pyfunc.load_model("models:/aepipe-digits@champion")
    raw_path = next((tmp_stores.data_dir / "digits").glob("*/raw.parquet"))
    raw = pq.read_table(raw_path).slice(0, 50).to_pandas()
    out = model.predict(raw.drop(columns=["event_timestamp", "label"]))
    table = read_features("digits", 2, home=home).set_index("entity_id").loc[out["entity_id"]]
    assert np.allclose(out["z_0"].to_numpy(), table["z_0"].to_numpy(), atol=1e-5)
    assert np.allclose(out["recon_error"].to_numpy(), table["recon_error"].to_numpy(), atol=1e-6)


def test_worse_model_is_not_promoted(prefect_server, home) -> None:
    good = reduce_features(config(home, epochs=20))
    worse = reduce_features(config(home, epochs=1))
    assert good.aliases == ["champion"]
    assert worse.aliases == ["challenger"] and "does not beat" in worse.promotion
    assert set(read_features("digits", home=home)["model_version"]) == {good.model_version}
