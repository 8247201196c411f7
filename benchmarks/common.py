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
    name: str,
    measured: float,
    goal: float,
    higher_is_better: bool = True,
    fmt: str = "{:.3g}",
    bound: str = "",
) -> str:
    """One ``TARGET <name> measured=<x> goal=<y> met|not met`` line; ``bound`` (``<=`` or
    ``>=``) when the figure is only a bound (a peer stopped at its time cap), printed as
    ``measured<=<x>``."""
    ok = measured >= goal if higher_is_better else measured <= goal
    return (
        f"TARGET {name} measured{bound or '='}{fmt.format(measured)} goal={fmt.format(goal)} "
        f"{'met' if ok else 'not met'}"
    )


def best_of(
    script: Path,
    *args: str,
    runs: int = 3,
    key: str = "seconds",
    higher_is_better: bool = False,
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Run a worker ``runs`` times, each in a fresh process; the best result by ``key``, with
    every run's value under ``all`` (so the spread shows) and every run's result under
    ``runs``."""
    results = [run_worker(script, *args, env=env) for _ in range(runs)]
    pick = max if higher_is_better else min
    best = pick(results, key=lambda r: r[key])
    return {**best, "all": [r[key] for r in results], "runs": results}


def machine() -> str:
    """The CPU model, the cores this process may use, torch's threads and whether the CPU
    computes bf16 natively: printed by every benchmark, since ratios depend on them."""
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    import torch

    from ae_models.runtime import cpu_has_fast_bf16

    return (
        f"machine: {model}; {cores} cores; torch {torch.__version__} with "
        f"{torch.get_num_threads()} threads; native bf16: {'yes' if cpu_has_fast_bf16() else 'no'}"
    )


def rss_mb() -> float:
    """This process's resident memory now (MB), for growth above its post-import baseline."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 1e6


def peak_rss_mb() -> float:
    """This process's peak resident memory so far (MB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def matmul_peak() -> dict[str, float]:
    """This CPU's matrix-multiply rate (FLOP/s) at fp32, and at bf16 where it is native
    (emulated bf16 is slow and aepipe does not use it), with torch's thread count."""
    import time

    import torch

    from ae_models.runtime import cpu_has_fast_bf16

    out: dict[str, float] = {"threads": float(torch.get_num_threads())}
    kinds = [("fp32", torch.float32)] + ([("bf16", torch.bfloat16)] if cpu_has_fast_bf16() else [])
    n = 2048
    for name, dtype in kinds:
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        a @ b
        reps, t0 = 5, time.perf_counter()
        for _ in range(reps):
            a @ b
        out[name] = 2 * n**3 * reps / (time.perf_counter() - t0)
    return out
