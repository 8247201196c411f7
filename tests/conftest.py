"""Shared fixtures: a real Prefect test server, per-test stores in tmp_path, shared data sets."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

# Before Prefect or MLflow are imported: no telemetry, Prefect state outside the user's home.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="aepipe-test-prefect-"))
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
if os.environ.get("PYTEST_XDIST_WORKER"):  # `make test` runs 2 workers, one per core:
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # each its own core, no oversubscription

import pytest

from stores import Stores, resolve_stores

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATASETS = ROOT.parent / "shared" / "datasets"

# The longest files first (measured: `pytest --durations=0`). `make test` hands whole files to
# its two workers in collection order (`--dist loadfile --no-loadscope-reorder`); xdist's own
# order (most tests first) started the 5-minute deployment test last, one worker idle meanwhile.
LONGEST_FIRST = [
    "tests/test_deployments.py",
    "tests/test_deployment_triggers.py",
    "tests/reliability/test_services_go_away.py",
    "tests/flows/test_reduce_features.py",
    "tests/test_cli.py",
    "tests/reliability/test_security.py",
    "tests/test_first_contact.py",
    "tests/reliability/test_load.py",
    "tests/remote/test_remote_stores.py",
    "tests/reliability/test_soak.py",
    "tests/test_real_data.py",
    "tests/flows/test_scale_out.py",
    "tests/reliability/test_faults.py",
]


STRICT_SKIPS = os.environ.get("CI", "").lower() in ("1", "true", "yes") or (
    os.environ.get("AEPIPE_STRICT_SKIPS") == "1"
)
_SKIPPED: list[tuple[str, str]] = []  # (test id, reason) of every skip this session


def allowed_skips(text: str | None = None) -> list[tuple[re.Pattern[str], str]]:
    """The skips ``docs/development.md`` lists ("Tests that may skip"): a test-id pattern
    (``*`` any text) and the start of the reason, per listed pattern."""
    text = text if text is not None else (ROOT / "docs" / "development.md").read_text()
    heading = "## Tests that may skip"
    section = text.split(heading, 1)[1].split("\n## ", 1)[0] if heading in text else ""
    allowed = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 3 or not cells[1].startswith("`"):
            continue
        reason = cells[1].strip("`")
        for pattern in re.findall(r"`([^`]+)`", cells[0]):
            regex = ".*".join(re.escape(part) for part in pattern.split("*"))
            allowed.append((re.compile(regex + r"\Z"), reason))
    return allowed


def unlisted_skips(
    skipped: list[tuple[str, str]], allowed: list[tuple[re.Pattern[str], str]]
) -> list[tuple[str, str]]:
    """The ``skipped`` (test id, reason) pairs no listed pattern and reason allows."""
    return [
        (test, reason)
        for test, reason in skipped
        if not any(p.match(test) and reason.startswith(r) for p, r in allowed)
    ]


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Remember each skip (on the xdist controller, every worker's)."""
    if report.skipped and not hasattr(report, "wasxfail"):
        longrepr = report.longrepr
        reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
        _SKIPPED.append((report.nodeid, reason.removeprefix("Skipped: ")))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """On CI, fail a session that skipped a test docs/development.md does not list."""
    if not STRICT_SKIPS or hasattr(session.config, "workerinput"):
        return
    unlisted = unlisted_skips(_SKIPPED, allowed_skips())
    if unlisted:
        lines = "\n".join(f"  {test}: {reason}" for test, reason in unlisted)
        print(f"\nskipped on CI without a line in docs/development.md:\n{lines}", file=sys.stderr)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Put the files of :data:`LONGEST_FIRST` first, in that order; the rest keep theirs."""
    rank = {path: i for i, path in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::", 1)[0], len(rank)))


@pytest.fixture(scope="session")
def prefect_server():
    """One real temporary Prefect server (SQLite) for every flow test in the session.

    Flow runs here send no heartbeats: a flow run's end waits up to a second for its
    heartbeat thread (Prefect joins it), about a minute of the suite, and nothing watches
    a test server for crashed runs."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    with (
        prefect_test_harness(server_startup_timeout=120),
        temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}),
    ):
        yield


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh aepipe home (MLflow, catalog, warehouse, data) in tmp_path."""
    for var in (
        "AEPIPE_HOME",
        "AEPIPE_TRACKING_URI",
        "AEPIPE_CATALOG",
        "AEPIPE_CATALOG_URI",
        "AEPIPE_WAREHOUSE",
    ):
        monkeypatch.delenv(var, raising=False)
    folder = tmp_path / "aepipe-home"
    return folder


@pytest.fixture
def tmp_stores(home: Path) -> Stores:
    """Stores rooted at the per-test home."""
    return resolve_stores(home)


@pytest.fixture(scope="session")
def shared_datasets() -> Path:
    """``../shared/datasets``, or a skip when this checkout has none beside it."""
    if not SHARED_DATASETS.is_dir():
        pytest.skip(f"shared data sets not found at {SHARED_DATASETS}")
    return SHARED_DATASETS


AEPIPE = shutil.which("aepipe", path=str(Path(sys.executable).parent)) or "aepipe"


def run_aepipe(*args: str, cwd: Path, env: dict[str, str] | None = None):
    """Run the ``aepipe`` console script as a user would: a clean environment (no AEPIPE_ or
    PREFECT_ settings of the test process), output captured as text. The CLI then starts
    its own temporary Prefect server in the run's home, as a new user's first run does."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("AEPIPE_", "PREFECT_"))}
    base.update(env or {})
    return subprocess.run(
        [AEPIPE, *args], cwd=cwd, env=base, capture_output=True, text=True, timeout=600
    )


@pytest.fixture(scope="session")
def aepipe_cli(prefect_server):
    """:func:`run_aepipe` against the session's Prefect server (``PREFECT_API_URL``), as a
    user with a running server has it: each call would otherwise start and migrate a
    temporary server of its own, 10-20 s. Pass ``own_server=True`` for a test of that path
    (the README's first run, or one that inspects the run's own Prefect database)."""
    from prefect.settings import get_current_settings

    url = str(get_current_settings().api.url)

    def run(*args: str, cwd: Path, env: dict[str, str] | None = None, own_server: bool = False):
        shared = {} if own_server else {"PREFECT_API_URL": url}
        return run_aepipe(*args, cwd=cwd, env={**shared, **(env or {})})

    return run


def run_main(*args: str, cwd: Path, env: dict[str, str] | None = None):
    """The ``aepipe`` command run in this process (``main(argv)`` from ``cwd``, the test's
    AEPIPE_ settings unset, ``env`` set), its output captured as a console script's would
    be: a console-script subprocess costs 2-5 s of imports a call, so :func:`run_aepipe`
    stays for the cases about the script or a run's own process. Usable from fixtures of
    any scope (module-scoped trained runs)."""
    import contextlib
    import io

    from aepipe.cli import main

    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as patch:
        for var in [v for v in os.environ if v.startswith("AEPIPE_")]:
            patch.delenv(var)
        for var, value in (env or {}).items():
            patch.setenv(var, value)
        patch.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                status = main(list(args))
            except SystemExit as exit_:  # argparse refusing a flag: status 2, as the script
                status = exit_.code if isinstance(exit_.code, int) else 1
    return subprocess.CompletedProcess(list(args), status, out.getvalue(), err.getvalue())


@pytest.fixture
def aepipe_main():
    """:func:`run_main`, for a test's checks of what the command prints and writes."""
    return run_main


def orders_frame(n: int, start: int, seed: int, scale: float = 1.0):
    """``n`` orders from ``start`` on, a minute apart (id, time, amount, items, region);
    ``scale`` > 1 makes them bigger: the amount and the items drift, the region does not."""
    from datetime import UTC, datetime, timedelta

    import numpy as np
    import pandas as pd

    t0 = datetime(2026, 7, 1, tzinfo=UTC)
    rng = np.random.default_rng(seed)
    amount = rng.gamma(4.0, 10.0, n) * scale
    return pd.DataFrame(
        {
            "order_id": [f"o{i}" for i in range(start, start + n)],
            "ts": [(t0 + timedelta(minutes=i)).isoformat() for i in range(start, start + n)],
            "amount": amount.round(2),
            "items": np.maximum(1, np.round(amount / 10 + rng.normal(0, 0.5, n))),
            "region": rng.choice(["north", "south", "east"], n, p=[0.5, 0.3, 0.2]),
        }
    )


@pytest.fixture(scope="session")
def orders():
    """:func:`orders_frame`: a stream of order batches for the drift tests."""
    return orders_frame
