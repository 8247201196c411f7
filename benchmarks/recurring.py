"""The hourly run with nothing to do: `aepipe score` on an unchanged source, against reading
one row of the feature table.

On the UCI Adult table (32,561 rows, 15 columns; ``../shared/datasets/adult``): one
``aepipe run`` (2 epochs) and one ``aepipe score`` set up a home; then, each in a fresh
process, best of ``--runs`` (3):
- ``aepipe score`` with nothing new: answered from the last run's note (no Prefect server);
- the same with the note removed: the whole flow (temporary Prefect server, cached ingest,
  the table's keys compared) says "nothing new" the old way;
- ``aepipe features adult --limit 1``: the cheapest command that opens the same stores, the
  floor a no-op can be compared with.

    .venv/bin/python benchmarks/recurring.py      # about 2 minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parents[1]))

from benchmarks.common import machine, require_dataset, target  # noqa: E402

AEPIPE = str(Path(sys.executable).with_name("aepipe"))


def timed(*args: str, env: dict[str, str]) -> tuple[float, str]:
    """Wall seconds of one ``aepipe`` command in a fresh process, and its output."""
    t0 = time.perf_counter()
    done = subprocess.run([AEPIPE, *args], env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"aepipe {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return seconds, done.stdout


def best(runs: int, *args: str, env: dict[str, str], before=None) -> tuple[float, list[float], str]:
    """The fastest of ``runs`` fresh-process runs (``before`` called ahead of each)."""
    times, out = [], ""
    for _ in range(runs):
        if before is not None:
            before()
        seconds, out = timed(*args, env=env)
        times.append(seconds)
    return min(times), times, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    print(machine(), flush=True)
    source = str(require_dataset("adult") / "adult.data")
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        env = {
            **os.environ,
            "MLFLOW_DISABLE_TELEMETRY": "true",
            "DO_NOT_TRACK": "true",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_LOGGING_LEVEL": "WARNING",
        }
        where = ["--source", source, "--label", "Salary", "--home", str(home)]
        timed("run", *where, "--epochs", "2", env=env)
        first, _ = timed("score", *where, env=env)  # the first scoring run writes the note
        note = home / "data" / "adult" / "last-score.json"
        assert note.is_file(), f"no scoring note at {note}"

        quick, quick_all, out = best(args.runs, "score", *where, env=env)
        assert "unchanged since the scoring run" in out, out
        full, full_all, out = best(
            args.runs, "score", *where, env=env, before=lambda: note.unlink(missing_ok=True)
        )
        assert "no new rows" in out, out
        peek, peek_all, _ = best(
            args.runs, "features", "adult", "--limit", "1", "--home", str(home), env=env
        )

    def spread(values: list[float]) -> str:
        return ", ".join(f"{v:.2f}" for v in values)

    print(f"first scoring run (writes the note)       {first:6.2f} s")
    print(f"score, nothing new, from the note         {quick:6.2f} s  (runs: {spread(quick_all)})")
    print(f"score, nothing new, whole flow            {full:6.2f} s  (runs: {spread(full_all)})")
    print(f"features adult --limit 1                  {peek:6.2f} s  (runs: {spread(peek_all)})")
    print(f"the note saves {full - quick:.1f} s a run ({full / quick:.1f}x faster)")
    print(target("noop_score_vs_features_limit_1", quick / peek, 2.0, False, "{:.2f}"))


if __name__ == "__main__":
    main()
