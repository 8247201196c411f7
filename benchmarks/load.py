"""Many runs at once (issue 22.1): ``aepipe run`` processes on different data sets, then
``aepipe score`` processes on one table, each set started together against one Prefect
server, as a shared deployment's worker would run them. Checks what such a deployment must
hold: every run ends well; each table holds every source row once (none twice, none lost);
each model version's slice is one run's rows. Prints each run's wall time (a process's
imports included).

    .venv/bin/python -m benchmarks.load                        # 4 runs, then 8 scorings
    .venv/bin/python -m benchmarks.load --reduce 2 --score 3   # the short version make test runs
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import machine, target

ROWS, NEW_ROWS = 1500, 500  # each data set's rows at first; rows added before the scorings
AEPIPE = str(Path(sys.executable).with_name("aepipe"))


def customers(n: int, start: int, seed: int) -> pd.DataFrame:
    """``n`` rows of a customer table from id ``start`` on, an hour apart: two numbers and a
    category, a little different for each ``seed``."""
    rng = np.random.default_rng(seed)
    t0 = pd.Timestamp("2026-11-01", tz="UTC")
    return pd.DataFrame(
        {
            "customer": [f"c{i}" for i in range(start, start + n)],
            "ts": [(t0 + pd.Timedelta(hours=i)).isoformat() for i in range(start, start + n)],
            "spend": rng.gamma(3.0, 20.0 + seed, n).round(2),
            "visits": rng.poisson(4 + seed, n),
            "plan": rng.choice(["free", "basic", "pro"], n, p=[0.5, 0.3, 0.2]),
        }
    )


@dataclass
class LoadReport:
    """What a load run measured: each run's seconds, and what the tables hold."""

    reduce_seconds: list[float] = field(default_factory=list)
    score_seconds: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)  # a line per run that did not end well
    rows_lost: int = 0
    rows_twice: int = 0
    mixed_slices: int = 0  # model versions whose rows came from more than one training run


def _write_config(folder: Path, name: str, source: Path, home: Path) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(
        f"home: {home}\n"
        f"dataset: {name}\n"
        f"source: {{path: {source}, entity_id: customer, timestamp: ts}}\n"
        "model: {code_size: 2, params: {hidden: [16]}}\n"
        "train: {epochs: 4, lr: 0.003, patience: 0}\n"
    )
    return path


def at_once(commands: list[list[str]], cwd: Path, env: dict[str, str]) -> list[tuple]:
    """Start every command together; (exit status, seconds, stderr's end) of each."""
    started = time.perf_counter()
    procs = [
        subprocess.Popen(
            c, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        for c in commands
    ]
    done: dict[int, tuple] = {}
    while len(done) < len(procs):
        for i, p in enumerate(procs):
            if i not in done and p.poll() is not None:
                done[i] = (p.returncode, time.perf_counter() - started, p.stderr.read()[-500:])
        time.sleep(0.1)
    return [done[i] for i in range(len(procs))]


def _check_table(report: LoadReport, name: str, expected: pd.DataFrame, home: Path) -> None:
    from feature_store import read_features

    table = read_features(name, home=home)
    keys = ["entity_id", "event_timestamp"]
    report.rows_twice += int(table.duplicated(keys).sum())
    found = set(table["entity_id"])
    report.rows_lost += int((~expected["customer"].isin(found)).sum())
    report.mixed_slices += int((table.groupby("model_version")["run_id"].nunique() > 1).sum())


def run_load(folder: Path, reduce_runs: int, score_runs: int, env: dict[str, str]) -> LoadReport:
    """``reduce_runs`` ``aepipe run`` processes on as many data sets at once, then
    ``score_runs`` ``aepipe score`` processes at once on the first data set after new rows
    arrived; ``env`` names the Prefect server (``PREFECT_API_URL``)."""
    home = folder / "home"
    report = LoadReport()
    configs, sources = [], []
    for i in range(reduce_runs):
        source = folder / f"load{i}.csv"
        customers(ROWS, 0, i).to_csv(source, index=False)
        configs.append(_write_config(folder, f"load{i}", source, home))
        sources.append(source)
    runs = at_once([[AEPIPE, "run", str(c)] for c in configs], folder, env)
    for i, (status, seconds, err) in enumerate(runs):
        report.reduce_seconds.append(seconds)
        if status != 0:
            report.failures.append(f"aepipe run load{i}: exit {status}: {err}")
    if report.failures:
        return report
    for i in range(1, reduce_runs):
        _check_table(report, f"load{i}", customers(ROWS, 0, i), home)
    grown = pd.concat([customers(ROWS, 0, 0), customers(NEW_ROWS, ROWS, 100)])
    grown.to_csv(sources[0], index=False)
    scorings = at_once([[AEPIPE, "score", str(configs[0])]] * score_runs, folder, env)
    for status, seconds, err in scorings:
        report.score_seconds.append(seconds)
        if status != 0:
            report.failures.append(f"aepipe score load0: exit {status}: {err}")
    _check_table(report, "load0", grown, home)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reduce", type=int, default=4, help="aepipe run processes at once")
    parser.add_argument("--score", type=int, default=8, help="aepipe score processes at once")
    args = parser.parse_args()
    print(machine())
    from prefect.settings import get_current_settings
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120), tempfile.TemporaryDirectory() as tmp:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AEPIPE_", "PREFECT_"))}
        env["PREFECT_API_URL"] = str(get_current_settings().api.url)
        report = run_load(Path(tmp), args.reduce, args.score, env)
    for what, times in (
        ("aepipe run", report.reduce_seconds),
        ("aepipe score", report.score_seconds),
    ):
        print(f"{what} x{len(times)} at once, seconds each: " + " ".join(f"{t:.1f}" for t in times))
    for line in report.failures:
        print("FAILED", line)
    print(target("load_runs_failed", len(report.failures), 0, False, "{:.0f}"))
    print(target("load_rows_lost", report.rows_lost, 0, False, "{:.0f}"))
    print(target("load_rows_twice", report.rows_twice, 0, False, "{:.0f}"))
    print(target("load_versions_of_two_runs", report.mixed_slices, 0, False, "{:.0f}"))


if __name__ == "__main__":
    main()
