"""A real deployment of prefect.yaml for the deployment tests: a Prefect server on
loopback, the cpu and gpu process pools, the Secret block of store settings, `prefect deploy
--all` and a worker a pool, each test file with its own (so the two files run on the two
xdist workers at once)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.services import free_port, prefect_api, wait_http

ROOT = Path(__file__).resolve().parents[1]
PREFECT = str(Path(sys.executable).with_name("prefect"))


def logged(api: str, flow_run: str, text: str, timeout: float = 60) -> bool:
    """Whether the flow run's logs hold ``text``, waiting for them: a run's last lines reach
    the server a moment after its final state."""
    deadline = time.monotonic() + timeout
    while True:
        query = {"logs": {"flow_run_id": {"any_": [flow_run]}}}
        logs = prefect_api(api, "POST", "/logs/filter", query)
        got = "\n".join(entry["message"] for entry in logs)
        if text in got:
            return True
        assert time.monotonic() < deadline, got[-2000:]
        time.sleep(1)


@dataclass(frozen=True)
class Deployed:
    """The running deployment: its API, the Secret block's tracking URI, and the prefect
    CLI with the deployment's environment."""

    api: str
    tracking: str
    env: dict[str, str]

    def cli(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        """``prefect *args`` against this server; fails the test on a non-zero exit."""
        done = subprocess.run(
            [PREFECT, *args], cwd=ROOT, env=self.env, capture_output=True, text=True,
            timeout=timeout,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        return done

    def run(self, deployment: str, config: dict[str, Any], timeout: float = 300) -> str:
        """Run ``deployment`` (``flow/deployment``) with ``config`` to its end: its output,
        checked to say Completed."""
        done = self.cli(
            "deployment", "run", deployment, "--params", json.dumps({"config": config}),
            "--watch", "--watch-timeout", str(int(timeout)), timeout=timeout + 60,
        )  # fmt: skip
        assert "Completed" in done.stdout, done.stdout[-3000:]
        return done.stdout

    def wait_for(self, run_ids: list[str], timeout: float = 300) -> list[dict]:
        """The flow runs' records once each has ended (completed, failed or crashed)."""
        deadline = time.monotonic() + timeout
        while True:
            states = [prefect_api(self.api, "GET", f"/flow_runs/{r}") for r in run_ids]
            if all(s["state_type"] in ("COMPLETED", "FAILED", "CRASHED") for s in states):
                return states
            assert time.monotonic() < deadline, [s["state_name"] for s in states]
            time.sleep(1)


@contextmanager
def deployed(tmp_path: Path) -> Iterator[Deployed]:
    """prefect.yaml deployed on a fresh server in ``tmp_path``, with a worker on each pool;
    every process's log printed when the test fails, every process stopped after."""
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "AEPIPE_"))} | {
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "PREFECT_API_URL": api,
        "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{tmp_path}/prefect.db",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED": "false",  # no scheduled runs in a test
        "PREFECT_WORKER_QUERY_SECONDS": "2",
        "PREFECT_LOGGING_LEVEL": "INFO",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "true",
        "PWD": str(ROOT),  # prefect.yaml's pull step: workers run from the repository root
        # the operator's allow-list: these runs name homes and sources under tmp_path
        "AEPIPE_ALLOWED_PATHS": str(tmp_path),
    }
    logs = tmp_path / "logs"
    logs.mkdir()
    procs: list[subprocess.Popen] = []

    def start(name: str, *args: str) -> subprocess.Popen:
        out = (logs / f"{name}.log").open("w")
        p = subprocess.Popen(
            [PREFECT, *args], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT
        )
        procs.append(p)
        return p

    # prefect.yaml's runs read their store settings from this block: MLflow lives where only
    # the block says
    tracking = f"sqlite:///{tmp_path / 'secret-mlflow.db'}"
    here = Deployed(api, tracking, env)
    try:
        server = start("server", "server", "start", "--host", "127.0.0.1", "--port", str(port))
        wait_http(f"{api}/health", server, logs / "server.log")
        for pool in ("cpu", "gpu"):
            here.cli("work-pool", "create", pool, "--type", "process")
        secret = f"Secret(value={{'AEPIPE_TRACKING_URI': {tracking!r}}}).save('aepipe-stores')"
        subprocess.run(
            [sys.executable, "-c", f"from prefect.blocks.system import Secret; {secret}"],
            env=env, check=True, timeout=120,
        )  # fmt: skip
        done = here.cli("--no-prompt", "deploy", "--all")
        for name in ("reduce-features", "train-autoencoder", "score-features", "maintain-features"):
            assert name in done.stdout
        start("worker-cpu", "worker", "start", "--pool", "cpu")
        start("worker-gpu", "worker", "start", "--pool", "gpu")
        yield here
    except BaseException:
        for log in sorted(logs.iterdir()):
            print(f"--- {log.name}\n{log.read_text()[-4000:]}")
        raise
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
