"""Helpers for tests that start real servers as subprocesses on loopback."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prefect_api(api: str, method: str, path: str, body: dict | None = None) -> dict | list:
    """One request to the Prefect REST API at ``api`` (its PREFECT_API_URL), JSON in and out."""
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


def serve(
    command: list[str],
    log: Path,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    **user: str,
) -> subprocess.Popen:
    """Start a server process in a session of its own (so :func:`stop` ends its children
    too), its output appended to ``log``; ``user`` and ``group`` run it as another user."""
    return subprocess.Popen(
        command,
        cwd=cwd,
        env=env,
        **user,
        stdout=log.open("a"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def stop(proc: subprocess.Popen, grace: float = 30, sig: int = signal.SIGTERM) -> None:
    """Stop a server started with ``start_new_session=True`` and every process it started:
    ``sig``, then SIGKILL after ``grace`` seconds."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, sig)
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


def start_mlflow(
    folder: Path,
    port: int,
    backend: str | None = None,
    artifacts: str | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.Popen:
    """A real ``mlflow server`` on 127.0.0.1:``port`` keeping its runs and artifacts in
    ``folder`` (started again on the same folder, it has them all back), or in the
    ``backend`` database and at ``artifacts`` (say ``s3://bucket/mlflow``, reached with the
    ``AWS_*`` settings of ``env``); returns once it accepts connections. Stop it with
    :func:`stop`."""
    import sys

    folder.mkdir(parents=True, exist_ok=True)
    log = folder / f"server-{port}.log"
    server = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "mlflow"),
            "server",
            "--backend-store-uri",
            backend or f"sqlite:///{folder / 'mlflow.db'}",
            "--artifacts-destination",
            artifacts or str(folder / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        cwd=folder,
        env={**(env or os.environ), "MLFLOW_DISABLE_TELEMETRY": "true"},
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
    server = serve([prefect, "server", "start", "--host", "127.0.0.1", "--port", port], log, env)
    wait_http(f"{api}/health", server, log)
    return server


@contextlib.contextmanager
def postgres(folder: Path) -> Iterator[str]:
    """A real PostgreSQL server; yields a SQLAlchemy URI (psycopg2) of its default database.
    The machine's own PostgreSQL (``initdb`` on PATH, with its contrib extensions, which
    Prefect's server needs) on a port of 127.0.0.1, run as the ``postgres`` user when this
    is root; else the ``pgserver`` package's (a Unix socket in ``folder``; no contrib); else
    a skip."""
    initdb = shutil.which("initdb")
    if initdb is None or (os.geteuid() == 0 and not _has_user("postgres")):
        pgserver = pytest.importorskip("pgserver", reason="no PostgreSQL: initdb or pgserver")
        server = pgserver.get_server(folder, cleanup_mode="stop")
        try:
            yield server.get_uri().replace("postgresql://", "postgresql+psycopg2://", 1)
        finally:
            server.cleanup()
        return
    import tempfile

    # PostgreSQL refuses to run as root: then its processes run as the postgres user
    as_user: dict[str, str] = {"user": "postgres", "group": "postgres"} if os.geteuid() == 0 else {}
    data = Path(tempfile.mkdtemp(prefix="aepipe-pg-"))  # outside pytest's root-only folders
    if as_user:
        shutil.chown(data, "postgres")
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / "postgres.log"
    subprocess.run(
        [initdb, "-D", str(data / "db"), "-U", "aepipe", "--auth=trust", "-E", "UTF8"],
        check=True,
        stdout=log.open("a"),
        stderr=subprocess.STDOUT,
        **as_user,
    )
    port = free_port()
    binary = str(Path(initdb).resolve().with_name("postgres"))
    listen = ["-h", "127.0.0.1", "-p", str(port), "-k", str(data)]
    server = serve([binary, "-D", str(data / "db"), *listen], log, **as_user)
    uri = f"postgresql+psycopg2://aepipe@127.0.0.1:{port}/postgres"
    try:
        _wait_database(uri, server, log)
        yield uri
    finally:
        # SIGINT is PostgreSQL's fast shutdown: SIGTERM's smart one waits for every client
        # to leave, and a test process's connection pools stay until it exits
        stop(server, sig=signal.SIGINT)
        shutil.rmtree(data, ignore_errors=True)


def _has_user(name: str) -> bool:
    import pwd

    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def _wait_database(uri: str, server: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    """Wait until the database at ``uri`` takes a connection; fail with the server's log."""
    import sqlalchemy as sa

    engine = sa.create_engine(uri, poolclass=sa.pool.NullPool)
    deadline = time.monotonic() + timeout
    try:
        while True:
            if server.poll() is not None:
                pytest.fail(f"postgres exited: {log.read_text()[-3000:]}")
            try:
                with engine.connect():
                    return
            except sa.exc.OperationalError:
                if time.monotonic() > deadline:
                    pytest.fail(f"postgres did not start in {timeout} s: {log.read_text()[-3000:]}")
                time.sleep(0.3)
    finally:
        engine.dispose()


def create_database(uri: str, name: str) -> str:
    """Create database ``name`` on the server of ``uri``; the URI of the new database."""
    import sqlalchemy as sa

    engine = sa.create_engine(uri, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    base, _, query = uri.partition("?")
    return f"{base.rsplit('/', 1)[0]}/{name}" + (f"?{query}" if query else "")


def start_moto(folder: Path, port: int, auth_after: int | None = None) -> subprocess.Popen:
    """A real S3-compatible server (``moto`` in server mode) on 127.0.0.1:``port``; with
    ``auth_after`` it checks credentials after that many requests (the set-up's: make a
    bucket, a user and its keys), so wrong keys are refused as S3 refuses them."""
    import sys

    folder.mkdir(parents=True, exist_ok=True)
    log = folder / f"moto-{port}.log"
    env = dict(os.environ)
    if auth_after is not None:
        env["INITIAL_NO_AUTH_ACTION_COUNT"] = str(auth_after)
    moto = str(Path(sys.executable).parent / "moto_server")
    server = serve([moto, "-H", "127.0.0.1", "-p", str(port)], log, env, cwd=folder)
    wait_http(f"http://127.0.0.1:{port}/moto-api/", server, log)
    return server


@dataclass
class DaskCluster:
    """A Dask scheduler and its workers, each a process of its own."""

    address: str
    scheduler: subprocess.Popen
    workers: list[subprocess.Popen]

    def stop(self) -> None:
        """Stop the workers, then the scheduler."""
        for proc in [*self.workers, self.scheduler]:
            stop(proc, grace=10)


def start_dask(folder: Path, homes: list[Path], env: dict[str, str]) -> DaskCluster:
    """A real Dask scheduler on 127.0.0.1 and one single-threaded ``dask worker`` process per
    folder in ``homes``, started in that folder with it as its ``AEPIPE_HOME`` (machines
    that share no folder), ``env`` their environment."""
    import sys

    from distributed import Client

    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    dask = str(Path(sys.executable).parent / "dask")
    log = folder / "scheduler.log"
    scheduler = serve(
        [dask, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
        log,
        env,
        cwd=folder,
    )
    workers = []
    for home in homes:
        home.mkdir(parents=True, exist_ok=True)
        command = [dask, "worker", address, "--nthreads", "1", "--no-dashboard", "--no-nanny"]
        command += ["--host", "127.0.0.1", "--local-directory", str(home / "dask")]
        worker_env = {**env, "AEPIPE_HOME": str(home / ".aepipe")}
        workers.append(serve(command, home / "worker.log", worker_env, cwd=home))
    with Client(address, timeout=60) as client:
        client.wait_for_workers(len(homes), timeout=120)
    return DaskCluster(address, scheduler, workers)
