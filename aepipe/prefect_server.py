"""The Prefect server of one CLI run, when no server is configured (no ``PREFECT_API_URL``).

Prefect would start its temporary server itself at the flow's first API call: importing its
server module into the run's process (about 2.5 s on 2 cores, holding the interpreter) and
then waiting for the server's own process to answer (about 4 s), both before the flow starts.
The CLI instead starts ``prefect server start`` (Prefect's public command) as a process of
its own as soon as it may, so the start overlaps the store checks and the flow's imports on
the other core, and points the flow at it (``PREFECT_API_URL``, for this process only). The
server keeps the state where the temporary one did (``PREFECT_HOME``, the home's
``prefect/``), runs the services a temporary server runs (task-run and event recording,
automations), not a long-running server's (schedules, late runs, workers' upkeep), serves no
UI, and stops when the run ends, however it ends.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

# a long-running server's services, which a run's own server does not need
SERVICES_OFF = (
    "scheduler",
    "late_runs",
    "foreman",
    "cancellation_cleanup",
    "pause_expirations",
    "repossessor",
    "db_vacuum",
    "cleanup_reconciler",
)
DEFAULT_START_TIMEOUT_S = 90  # a loaded 2-core machine took over Prefect's 20 s once


class RunServer:
    """A ``prefect server start`` process on a free loopback port, for this run."""

    def __init__(self, log: Path) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        env = {
            **os.environ,
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_SERVER_UI_ENABLED": "false",
            **{f"PREFECT_SERVER_SERVICES_{name.upper()}_ENABLED": "false" for name in SERVICES_OFF},
        }
        env.pop("PREFECT_API_URL", None)
        log.parent.mkdir(parents=True, exist_ok=True)
        self.log = log
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                [
                    str(Path(sys.executable).with_name("prefect")),
                    "server",
                    "start",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--no-ui",
                ],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        atexit.register(self.stop)

    @property
    def api_url(self) -> str:
        """The server's API, as ``PREFECT_API_URL`` names it."""
        return f"http://127.0.0.1:{self.port}/api"

    def wait(self) -> None:
        """Until the server answers its health check; a RuntimeError naming its log when it
        exits first or does not answer within ``PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS``
        (90 s unless set)."""
        limit = float(
            os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS")
            or DEFAULT_START_TIMEOUT_S
        )
        deadline = time.monotonic() + limit
        while True:
            try:
                with urllib.request.urlopen(f"{self.api_url}/health", timeout=2) as reply:
                    if reply.status == 200:
                        return
            except OSError:
                pass
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"the run's Prefect server exited with status {self.process.returncode} "
                    f"before it answered; its log: {self.log}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"the run's Prefect server did not answer within {limit:g} s "
                    f"(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS); its log: {self.log}"
                )
            time.sleep(0.1)

    @contextlib.contextmanager
    def serving(self) -> Iterator[None]:
        """Wait for the server, point this process's Prefect client at it, stop it after."""
        from prefect.settings import PREFECT_API_URL, temporary_settings

        try:
            self.wait()
            with temporary_settings(updates={PREFECT_API_URL: self.api_url}):
                try:
                    yield
                finally:
                    _send_what_is_queued()  # the run's last logs and events, while it serves
        finally:
            self.stop()

    def stop(self) -> None:
        """End the server (SIGTERM, then SIGKILL after 10 s); nothing when it has ended."""
        if self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _send_what_is_queued() -> None:
    """Block until Prefect's background workers have sent the logs and events they hold
    (else they try a stopped server at exit, for over a minute of retries)."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()
    EventsWorker.drain_all()


def configured_server() -> bool:
    """Whether this process already talks to a Prefect server (``PREFECT_API_URL``)."""
    from prefect.settings import get_current_settings

    return bool(get_current_settings().api.url)
