"""The train stage on edge-case data: tiny tables and one-wide codes still train and draw."""

from __future__ import annotations

from tasks.config import build_config
from tasks.ingest import ingest_source
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
