"""The feature table's anomaly score on a table, as a default run writes it (issue 41): the
anomalies of a table sit at the ends of their columns' ranges, where a min-max scaled
column's cross-entropy is smallest, so the old default score (``bce``) ranked them as the
most normal rows (ADBench's thyroid: AUROC 0.057)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from feature_store import read_features
from flows.reduce_features import reduce_features
from stores import resolve_stores
from tasks.config import build_config

pytestmark = pytest.mark.slow


def hormone_table(n: int = 2000, anomalies: int = 60, seed: int = 0) -> pd.DataFrame:
    """Six measurements around the middle of their ranges; the anomalies high in three of
    them (beyond every normal row), as in thyroid's hormone levels."""
    rng = np.random.default_rng(seed)
    values = rng.normal(0.5, 0.08, (n, 6))
    values[:anomalies, :3] += rng.uniform(0.5, 0.8, (anomalies, 3))
    frame = pd.DataFrame(values.round(4), columns=[f"m{i}" for i in range(6)])
    frame.insert(0, "patient", [f"p{i}" for i in range(n)])
    frame["outlier"] = (np.arange(n) < anomalies).astype(int)
    return frame.sample(frac=1.0, random_state=seed)


def test_a_default_table_run_ranks_the_anomalies_first(
    prefect_server, home: Path, tmp_path: Path
) -> None:
    source = tmp_path / "hormones.csv"
    hormone_table().to_csv(source, index=False)
    cfg = build_config(
        {
            "home": str(home),
            "dataset": "hormones",
            "source": {"path": str(source), "entity_id": "patient", "label": "outlier"},
            "train": {"epochs": 15, "patience": 0},
        }
    )
    summary = reduce_features(cfg)
    assert summary.quality["test_auroc"] >= 0.95  # the run's own figure, on its test split
    table = read_features("hormones", home=home)
    labels = pd.read_csv(source).set_index("patient")["outlier"]
    y = labels.loc[table["entity_id"]].to_numpy()
    assert roc_auc_score(y, table["anomaly_score"]) >= 0.95  # what downstream users read
    assert roc_auc_score(y, table["recon_error"]) >= 0.95
    models = resolve_stores(home).models_dir / "hormones"
    (meta,) = [json.loads(p.read_text()) for p in models.glob("*/model.json")]
    assert meta["score"]["kind"] == "ensemble" and meta["score"]["floor"] is not None
