"""Two whole pipeline runs on the same data set at once: both finish, and the registry and the
feature table agree afterwards."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from feature_store import load_table, read_features
from flows.reduce_features import reduce_features
from stores import resolve_stores
from tasks.config import build_config

pytestmark = pytest.mark.slow


def test_two_runs_on_the_same_data_set_at_once(prefect_server, home) -> None:
    import mlflow

    def run(seed: int):
        cfg = build_config(
            {
                "home": str(home),
                "model": {"code_size": 4},
                "train": {"epochs": 3, "lr": 3e-3, "patience": 0, "seed": seed},
            }
        )
        return reduce_features(cfg)

    with ThreadPoolExecutor(2) as pool:
        summaries = list(pool.map(run, [1, 2]))  # raises if either run failed
    versions = sorted(s.model_version for s in summaries)
    assert versions == [1, 2] and all(s.rows_written == 1797 for s in summaries)

    st = resolve_stores(home)
    client = mlflow.MlflowClient(st.tracking_uri, st.tracking_uri)
    registered = client.search_model_versions("name='aepipe-digits'")
    assert sorted(int(v.version) for v in registered) == [1, 2]
    champion = int(client.get_model_version_by_alias("aepipe-digits", "champion").version)
    assert champion in (1, 2)
    # registering and promoting took turns: version 1 met no champion and took the alias;
    # version 2 was compared against version 1 (without the lock both can find no champion
    # and both be promoted over the same one)
    tags = {int(v.version): v.tags for v in registered}
    assert tags[1]["promotion.decision"] == "promoted"
    assert tags[1]["promotion.champion_version"] == ""
    assert tags[2]["promotion.champion_version"] == "1"
    promoted_over = [
        t["promotion.champion_version"]
        for t in tags.values()
        if t["promotion.decision"] == "promoted"
    ]
    assert len(promoted_over) == len(set(promoted_over))
    assert champion == (2 if tags[2]["promotion.decision"] == "promoted" else 1)
    for run_id in (s.run_id for s in summaries):
        assert client.get_run(run_id).info.status == "FINISHED"

    for version in (1, 2):  # each version's rows are all there, once
        frame = read_features("digits", version, home=home)
        assert len(frame) == 1797 and frame["entity_id"].is_unique
    assert set(read_features("digits", home=home)["model_version"]) == {champion}
    table = load_table("digits", st)
    assert table.scan().to_arrow().num_rows == 2 * 1797


def test_scoring_runs_at_once_append_each_new_row_once(prefect_server, home, orders) -> None:
    """Issue 22.1: scoring runs started together on one table all finish, and the new rows
    land once. Without the scoring lock each run found the same rows new and appended
    them: 3 runs, every new row 3 times (checked by removing the lock)."""
    import threading

    import pandas as pd

    from flows.ingest import ingest_source
    from tasks.score import load_champion, score_new_rows

    source = home.parent / "orders.csv"
    orders(800, 0, 1).to_csv(source, index=False)
    cfg = build_config(
        {
            "home": str(home),
            # not "orders": tests/flows/test_drift.py reads that one's events and artifacts
            "dataset": "scored_at_once",
            "source": {"path": str(source), "entity_id": "order_id", "timestamp": "ts"},
            "model": {"code_size": 2},
            "train": {"epochs": 4, "lr": 3e-3, "patience": 0},
        }
    )
    reduce_features(cfg)
    pd.concat([orders(800, 0, 1), orders(300, 800, 2)]).to_csv(source, index=False)
    st = resolve_stores(home)
    ingested = ingest_source(cfg, st)
    champion = load_champion(cfg, st)
    together = threading.Barrier(3)

    def run(_: int) -> int:
        together.wait(60)  # the three find their new rows at the same moment
        return score_new_rows(ingested, champion, cfg, st).rows_written

    with ThreadPoolExecutor(3) as pool:
        wrote = sorted(pool.map(run, range(3)))  # raises if a run failed
    assert wrote == [0, 0, 300]  # one found the rows new; the others found none left
    table = read_features("scored_at_once", home=home)
    assert len(table) == 1100 and not table.duplicated(["entity_id", "event_timestamp"]).any()
