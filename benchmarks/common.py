"""Helpers shared by the benchmarks: data location, subprocess workers, target lines."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("AEPIPE_SHARED", ROOT.parent / "shared")) / "datasets"


def require_dataset(name: str) -> Path:
    """Path of ``../shared/datasets/<name>``; exits with a message when it is absent."""
    path = SHARED / name
    if not path.exists():
        sys.exit(f"benchmark needs {path} (the shared data sets); set AEPIPE_SHARED")
    return path


def run_worker(script: Path, *args: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``script --worker ...`` in a fresh process; return the JSON it prints last."""
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run(
        [sys.executable, str(script), "--worker", *args],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=ROOT,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"worker {args} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def target(
    name: str, measured: float, goal: float, higher_is_better: bool = True, fmt: str = "{:.3g}"
) -> str:
    """One ``TARGET <name> measured=<x> goal=<y> met|not met`` line."""
    ok = measured >= goal if higher_is_better else measured <= goal
    return (
        f"TARGET {name} measured={fmt.format(measured)} goal={fmt.format(goal)} "
        f"{'met' if ok else 'not met'}"
    )
