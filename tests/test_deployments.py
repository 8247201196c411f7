"""prefect.yaml for real: a Prefect server on loopback, `prefect deploy`, process workers on
the cpu and gpu pools, a reduce-features run that hands training to train-autoencoder, and
two training runs at once that the gpu deployment's concurrency limit makes take turns."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pandas as pd
import pytest

from feature_store import read_drift
from tests.services import free_port, wait_http

ROOT = Path(__file__).resolve().parents[1]
PREFECT = str(Path(sys.executable).with_name("prefect"))

pytestmark = pytest.mark.slow


def call(api: str, method: str, path: str, body: dict | None = None) -> dict | list:
    """One request to the Prefect REST API, JSON in and out."""
    request = urllib.request.Request(
        f"{api}{path}",
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Content-Type": "application/json"},
        method=method,
    )
    for attempt in range(5):
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as err:
            # the server answers 503 while its SQLite database is busy: a client retries
            if err.code != 503 or attempt == 4:
                raise
            time.sleep(1 + attempt)
    raise AssertionError("unreachable")


def two_training_runs_take_turns(api: str) -> None:
    """Start two train-autoencoder runs at once: with the deployment's concurrency limit of 1
    (ENQUEUE) the second waits for the first, so their run times do not overlap."""
    deployment = call(api, "GET", "/deployments/name/train-autoencoder/train-autoencoder")
    assert deployment["global_concurrency_limit"]["limit"] == 1
    (earlier,) = call(
        api, "POST", "/flow_runs/filter", {"deployments": {"id": {"any_": [deployment["id"]]}}}
    )
    runs = [
        call(
            api,
            "POST",
            f"/deployments/{deployment['id']}/create_flow_run",
            {"parameters": earlier["parameters"] | {"request_id": f"turns-{i}"}},
        )["id"]
        for i in range(2)
    ]
    deadline = time.monotonic() + 300
    while True:
        states = [call(api, "GET", f"/flow_runs/{r}") for r in runs]
        if all(s["state_type"] in ("COMPLETED", "FAILED", "CRASHED") for s in states):
            break
        assert time.monotonic() < deadline, [s["state_name"] for s in states]
        time.sleep(2)
    assert [s["state_type"] for s in states] == ["COMPLETED", "COMPLETED"]
    first, second = sorted(states, key=lambda s: s["start_time"])
    assert second["start_time"] >= first["end_time"], (first, second)


def drift_retrains_through_the_trigger(api: str, cli, home: Path, orders, tracking: str) -> None:
    """Score-features deployment runs on a clean batch and on a drifted one: the drifted
    run emits aepipe.drift.detected and reduce-features' trigger starts one retrain with
    that run's config; the clean run starts nothing."""
    path = home.parent / "orders.csv"
    parts = [orders(3000, 0, 1)]
    config = {
        "home": str(home),
        "dataset": "orders",
        "source": {"path": str(path), "entity_id": "order_id", "timestamp": "ts"},
        "model": {"code_size": 2, "params": {"hidden": [16]}},
        "train": {"epochs": 8, "lr": 3e-3, "patience": 0},
    }

    def run(name: str) -> None:
        pd.concat(parts).to_csv(path, index=False)
        params = json.dumps({"config": config})
        done = cli(
            "deployment", "run", f"{name}/{name}", "--params", params,
            "--watch", "--watch-timeout", "300", timeout=360,
        )  # fmt: skip
        assert "Completed" in done.stdout, done.stdout[-3000:]

    run("reduce-features")
    deployment = call(api, "GET", "/deployments/name/reduce-features/reduce-features")
    by_deployment = {"deployments": {"id": {"any_": [deployment["id"]]}}}
    before = {r["id"] for r in call(api, "POST", "/flow_runs/filter", by_deployment)}
    parts.append(orders(600, 3000, 2))  # like the training data
    run("score-features")
    parts.append(orders(600, 3600, 3, scale=1.6))  # bigger orders
    run("score-features")
    deadline = time.monotonic() + 300
    while True:
        runs = [r for r in call(api, "POST", "/flow_runs/filter", by_deployment)]
        new = [r for r in runs if r["id"] not in before]
        if new and all(r["state_type"] in ("COMPLETED", "FAILED", "CRASHED") for r in new):
            break
        assert time.monotonic() < deadline, [r["state_name"] for r in new] or "no run"
        time.sleep(2)
    # the drifted run's report (an artifact on its flow run) names who retrains (issue 40.5)
    reports = call(api, "POST", "/artifacts/filter", {"artifacts": {"key": {"any_": [
        "aepipe-score-orders"]}}})  # fmt: skip
    assert any("reduce-features/reduce-features will retrain it" in a["data"] for a in reports)
    (retrain,) = new  # the drifted batch's; the clean batch's run would be here by now
    assert retrain["state_type"] == "COMPLETED", retrain["state_name"]
    # the event names the data set and version only; the run loaded version 1's config
    assert retrain["parameters"]["retrain"] == {
        "dataset": "orders", "registered_model": "aepipe-orders", "version": 1
    }  # fmt: skip
    import mlflow

    client = mlflow.MlflowClient(tracking, tracking)
    retrained = client.get_model_version("aepipe-orders", "2")
    assert client.get_run(retrained.run_id).data.params["train.epochs"] == "8"
    history = read_drift("orders", home=home)  # the retrain's first write is checked too
    scored = history[history["model_version"] == 1]
    assert list(scored["drifted"]) == [False, False, True]  # first write, clean, drifted


def _logged(api: str, flow_run: str, text: str, timeout: float = 60) -> bool:
    """Whether the flow run's logs hold ``text``, waiting for them: a run's last lines reach
    the server a moment after its final state."""
    deadline = time.monotonic() + timeout
    while True:
        logs = call(api, "POST", "/logs/filter", {"logs": {"flow_run_id": {"any_": [flow_run]}}})
        got = "\n".join(entry["message"] for entry in logs)
        if text in got:
            return True
        assert time.monotonic() < deadline, got[-2000:]
        time.sleep(1)


def a_place_not_allowed_is_refused(api: str, home: Path) -> None:
    """Whoever can start a deployment's run cannot make it read a file outside the places
    the operator allowed (AEPIPE_ALLOWED_PATHS): the run fails before it reads anything."""
    deployment = call(api, "GET", "/deployments/name/score-features/score-features")
    config = {
        "home": str(home),
        "dataset": "passwd",
        "source": {"path": "/etc/passwd", "format": "csv", "delimiter": ":", "header": False},
    }
    run = call(
        api, "POST", f"/deployments/{deployment['id']}/create_flow_run",
        {"parameters": {"config": config}},
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while (state := call(api, "GET", f"/flow_runs/{run['id']}"))["state_type"] not in (
        "COMPLETED", "FAILED", "CRASHED"
    ):  # fmt: skip
        assert time.monotonic() < deadline, state["state_name"]
        time.sleep(1)
    assert state["state_type"] == "FAILED"
    refused = "source.path '/etc/passwd' is not this deployment's own"
    assert refused in (state["state"]["message"] or "") or _logged(api, run["id"], refused)
    assert not (home / "data" / "passwd").exists()


def test_deploy_and_run_with_training_on_the_gpu_pool(tmp_path: Path, orders) -> None:
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

    def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        done = subprocess.run(
            [PREFECT, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
        )
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        return done

    try:
        server = start("server", "server", "start", "--host", "127.0.0.1", "--port", str(port))
        wait_http(f"{api}/health", server, logs / "server.log")
        for pool in ("cpu", "gpu"):
            cli("work-pool", "create", pool, "--type", "process")
        # prefect.yaml's runs read their store settings from this block: MLflow lives where
        # only the block says
        tracking = f"sqlite:///{tmp_path / 'secret-mlflow.db'}"
        secret = f"Secret(value={{'AEPIPE_TRACKING_URI': {tracking!r}}}).save('aepipe-stores')"
        subprocess.run(
            [sys.executable, "-c", f"from prefect.blocks.system import Secret; {secret}"],
            env=env, check=True, timeout=120,
        )  # fmt: skip
        deployed = cli("--no-prompt", "deploy", "--all")
        for name in ("reduce-features", "train-autoencoder", "score-features", "maintain-features"):
            assert name in deployed.stdout
        start("worker-cpu", "worker", "start", "--pool", "cpu")
        start("worker-gpu", "worker", "start", "--pool", "gpu")
        home = tmp_path / "home"
        config = {
            "home": str(home),
            "model": {"code_size": 8},
            "train": {"epochs": 3, "lr": 3e-3, "patience": 0},
            "train_deployment": "train-autoencoder/train-autoencoder",
        }
        run = cli(
            "deployment",
            "run",
            "reduce-features/reduce-features",
            "--params",
            json.dumps({"config": config}),
            "--watch",
            "--watch-timeout",
            "600",
            timeout=660,
        )
        assert "Completed" in run.stdout, run.stdout[-3000:]
        upkeep = cli(
            "deployment",
            "run",
            "maintain-features/maintain-features",
            "--params",
            json.dumps({"config": {"home": str(home)}}),
            "--watch",
            "--watch-timeout",
            "300",
        )
        assert "Completed" in upkeep.stdout, upkeep.stdout[-3000:]
        two_training_runs_take_turns(api)
        drift_retrains_through_the_trigger(api, cli, home, orders, tracking)
        a_place_not_allowed_is_refused(api, home)
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

    import mlflow

    from feature_store import read_features

    frame = read_features("digits", home=home)
    assert len(frame) == 1797 and set(frame["model_version"]) == {1}
    assert not (home / "mlflow.db").exists()  # the runs took the Secret block's store
    client = mlflow.MlflowClient(tracking, tracking)
    (trained_run,) = [
        r
        for r in client.search_runs(
            [client.get_experiment_by_name("aepipe-digits").experiment_id],
            "tags.`aepipe.request_id` != ''",
        )
        if not r.data.tags["aepipe.request_id"].startswith("turns-")
    ]
    assert set(frame["run_id"]) == {trained_run.info.run_id}
    assert trained_run.data.metrics["epochs_run"] == 3  # trained by the gpu pool's run
