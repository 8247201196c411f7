"""Registration under faults: a champion that cannot be loaded for the comparison never lets
an untested challenger take over, and the registration step is not retried."""

from __future__ import annotations

import pytest

from flows.reduce_features import reduce_features
from stores import resolve_stores
from tasks.config import build_config

pytestmark = pytest.mark.slow


def config(home, epochs: int):
    return build_config(
        {
            "home": str(home),
            "model": {"code_size": 4},
            "train": {"epochs": epochs, "lr": 3e-3, "patience": 0},
        }
    )


def test_a_champion_that_cannot_be_loaded_fails_registration_once(prefect_server, home) -> None:
    """The champion's logged files are gone (a wiped artifact store): the comparison is tried
    three times, then the registration fails in one line naming the champion; the new
    version is registered once (no retry of the step), stays challenger, and says why."""
    import mlflow
    from prefect import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterName

    reduce_features(config(home, 3))
    st = resolve_stores(home)
    wiped = [p for p in st.artifact_root.rglob("MLmodel")]
    assert wiped, "the first run logged no model"
    for path in wiped:
        path.unlink()

    with pytest.raises(Exception, match=r"the champion \(version 1\) could not be loaded"):
        reduce_features(config(home, 4))

    client = mlflow.MlflowClient(st.tracking_uri, st.tracking_uri)
    versions = client.search_model_versions("name='aepipe-digits'")
    assert sorted(int(v.version) for v in versions) == [1, 2]  # registered once, not retried
    model = client.get_registered_model("aepipe-digits")
    assert {k: int(v) for k, v in model.aliases.items()} == {"champion": 1, "challenger": 2}
    v2 = client.get_model_version("aepipe-digits", "2")
    assert v2.tags["promotion.decision"] == "error"
    assert "stays challenger" in v2.tags["promotion.reason"]

    async def register_runs() -> list:
        async with get_client() as api:
            return await api.read_task_runs(
                task_run_filter=TaskRunFilter(name=TaskRunFilterName(like_="register"))
            )

    import asyncio

    runs = [r for r in asyncio.run(register_runs()) if r.state and r.state.is_failed()]
    assert runs and all(r.run_count == 1 for r in runs)  # one attempt, no retry
