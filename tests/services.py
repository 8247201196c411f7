"""Helpers for tests that start real servers as subprocesses on loopback."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, server: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    """Wait until ``url`` answers 200; fail with the server's log if it exits or never does."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"server exited: {log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"{url} did not answer in {timeout} s: {log.read_text()[-3000:]}")


def stop(proc: subprocess.Popen, grace: float = 30) -> None:
    """Stop a server started with ``start_new_session=True`` and every process it started."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass


@contextlib.contextmanager
def small_filesystem(folder: Path, size: str) -> Iterator[Path]:
    """``folder`` as a size-limited tmpfs (``size`` as mount takes it: ``4m``) while the block
    runs; a skip with the reason where mounting is refused (not root, no CAP_SYS_ADMIN)."""
    folder.mkdir(parents=True, exist_ok=True)
    mount = shutil.which("mount") or "/bin/mount"
    done = subprocess.run(
        [mount, "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a {size} tmpfs here: {(done.stderr or done.stdout).strip()}")
    try:
        yield folder
    finally:
        subprocess.run([shutil.which("umount") or "/bin/umount", "-l", str(folder)], check=False)


def start_mlflow(folder: Path, port: int) -> subprocess.Popen:
    """A real ``mlflow server`` on 127.0.0.1:``port`` keeping its runs and artifacts in
    ``folder`` (started again on the same folder, it has them all back); returns once it
    accepts connections. Stop it with :func:`stop`."""
    import sys

    folder.mkdir(parents=True, exist_ok=True)
    log = folder / f"server-{port}.log"
    server = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "mlflow"),
            "server",
            "--backend-store-uri",
            f"sqlite:///{folder / 'mlflow.db'}",
            "--artifacts-destination",
            str(folder / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        cwd=folder,
        env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"},
        stdout=log.open("a"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    wait_http(f"http://127.0.0.1:{port}/health", server, log)
    return server


def prefect_env(folder: Path, port: int) -> dict[str, str]:
    """The environment of a user's shell pointed at a Prefect server on ``port`` whose
    database and home are in ``folder`` (no AEPIPE_ or PREFECT_ settings of the tests)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "AEPIPE_"))}
    return env | {
        "PREFECT_HOME": str(folder / "prefect"),
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{folder}/prefect.db",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED": "false",  # no scheduled runs in a test
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "true",
    }


def start_prefect(env: dict[str, str], log: Path) -> subprocess.Popen:
    """``prefect server start`` with ``env`` (see :func:`prefect_env`); returns once it answers
    (started again on the same database, it has every run back). Stop it with :func:`stop`."""
    import sys

    api = env["PREFECT_API_URL"]
    port = api.rsplit(":", 1)[1].split("/")[0]
    prefect = str(Path(sys.executable).with_name("prefect"))
    server = subprocess.Popen(
        [prefect, "server", "start", "--host", "127.0.0.1", "--port", port],
        env=env,
        stdout=log.open("a"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    wait_http(f"{api}/health", server, log)
    return server
