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
