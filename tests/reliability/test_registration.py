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


def test_a_champion_that_loads_at_the_second_try_is_compared(
    prefect_server, home, monkeypatch
) -> None:
    """A transient error (the artifact store hiccups once): tried again after 1 s, loaded,
    and the comparison decides as usual."""
    import tasks.register as register

    reduce_features(config(home, 3))
    waits, calls = [], []
    real_load = register.load_version_model

    def flaky(*args):
        calls.append(args[1])
        if len(calls) == 1:
            raise OSError("connection reset by peer")
        return real_load(*args)

    monkeypatch.setattr(register, "load_version_model", flaky)
    monkeypatch.setattr(register, "time", type("Clock", (), {"sleep": staticmethod(waits.append)}))
    second = reduce_features(config(home, 4))
    assert calls == [1, 1] and waits == [1]
    assert second.model_version == 2
    assert "could not be loaded" not in second.promotion and "error" not in second.promotion


def test_a_champion_that_cannot_be_loaded_fails_registration_once(
    prefect_server, home, monkeypatch
) -> None:
    """The champion's logged files are gone (a wiped artifact store): the comparison is tried
    three times, 1 s then 2 s apart, then the registration fails in one line naming the
    champion; the new version is registered once (no retry of the step), stays challenger,
    and says why."""
    import mlflow
    from prefect import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterName

    import tasks.register as register

    reduce_features(config(home, 3))
    st = resolve_stores(home)
    wiped = [p for p in st.artifact_root.rglob("MLmodel")]
    assert wiped, "the first run logged no model"
    for path in wiped:
        path.unlink()

    loads, waits = [], []  # the attempts, and the pauses between them (not slept here)
    real_load = register.load_version_model
    monkeypatch.setattr(
        register, "load_version_model", lambda *a: loads.append(a[1]) or real_load(*a)
    )
    monkeypatch.setattr(register, "time", type("Clock", (), {"sleep": staticmethod(waits.append)}))
    with pytest.raises(Exception, match=r"the champion \(version 1\) could not be loaded"):
        reduce_features(config(home, 4))
    assert loads == [1, 1, 1] and waits == [1, 2]
    monkeypatch.undo()

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
