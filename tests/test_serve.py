"""`aepipe serve` for real: prefect.yaml's deployments served by one process on a running
Prefect server (no work pool, no worker), store settings from the Secret block that
prefect.yaml names."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import AEPIPE
from tests.services import stop

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


def wait_for(what, check, proc: subprocess.Popen, log: Path, timeout: float = 300):
    """Poll ``check()`` until it returns something truthy; fail with the serve log if the
    serving process exits or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"aepipe serve exited: {log.read_text()[-3000:]}")
        found = check()
        if found:
            return found
        time.sleep(1)
    pytest.fail(f"no {what} in {timeout} s: {log.read_text()[-3000:]}")


def test_serve_runs_the_deployments_with_the_secret_blocks_stores(prefect_server, tmp_path):
    from prefect import get_client
    from prefect.blocks.system import Secret
    from prefect.exceptions import ObjectNotFound
    from prefect.settings import get_current_settings

    elsewhere = tmp_path / "secret-home"  # only the secret says so
    Secret(value={"AEPIPE_HOME": str(elsewhere)}).save("aepipe-stores", overwrite=True)
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AEPIPE_", "PREFECT_"))}
    env |= {"PREFECT_API_URL": str(get_current_settings().api.url), "AEPIPE_HOME": str(home)}
    log = tmp_path / "serve.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [AEPIPE, "serve"], cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    client = get_client(sync_client=True)

    def deployment(name: str):
        try:
            return client.read_deployment_by_name(f"{name}/{name}")
        except ObjectNotFound:
            return None

    try:
        names = ("reduce-features", "train-autoencoder", "score-features", "maintain-features")
        wait_for("deployments", lambda: all(deployment(n) for n in names), proc, log, 120)
        reduce = deployment("reduce-features")
        assert [s.schedule.cron for s in reduce.schedules] == ["0 2 * * *"]
        assert reduce.parameters["config"]["dataset"] == "digits"  # prefect.yaml's
        assert deployment("train-autoencoder").global_concurrency_limit.limit == 1
        automations = client.read_automations_by_name("reduce-features__automation_1")
        assert automations and automations[0].trigger.expect == {"aepipe.drift.detected"}

        # a served run: table upkeep (quick), with its stores from the Secret block
        upkeep = deployment("maintain-features")
        assert [s.schedule.cron for s in upkeep.schedules] == ["30 3 * * *"]
        run = client.create_flow_run_from_deployment(upkeep.id)

        def finished():
            state = client.read_flow_run(run.id).state
            return state if state.is_final() else None

        state = wait_for("finished run", finished, proc, log)
        assert state.is_completed(), (state, log.read_text()[-3000:])
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: the served schedules pause
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                stop(proc)
        Secret.delete("aepipe-stores")
    assert deployment("reduce-features").paused, log.read_text()[-2000:]
    served = log.read_text()
    assert "store settings from Secret block 'aepipe-stores': AEPIPE_HOME" in served
    assert f"no feature store under {elsewhere} yet: nothing to maintain" in served
