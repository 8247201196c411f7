"""Scoring throughput scaled out: the thread runner against 1 and 2 Dask worker processes.

Set-up (not timed): a deep autoencoder (code 4) trained for 2 epochs on 20,000 rows of a
synthetic table (16 numeric columns, one 8-level category) with aepipe's own
``reduce-features`` flow, registered as champion in a temporary home; then 1,000,000 new rows
of the same table, ingested once. A Prefect server runs for the whole script.

Timed, best of ``--runs`` (3) per contender, one after the other in this process: the
score-features flow's partitioned write (``flows.partitions.run_partitioned``: 8 partitions
of 125,000 rows, each read from the ingested Parquet, normalized, encoded and staged as
Iceberg data files; one commit), on

- ``threads``: Prefect's thread runner, one thread per usable CPU (the default);
- ``dask-1`` and ``dask-2``: a Dask ``LocalCluster`` of 1 and 2 worker processes (one thread
  each) started here, its address given as ``dask_address`` (as for a remote cluster).

After each run the table is set back to the snapshot before it (so every run scores the same
1M rows). Prints rows/s for each and the ratio of 2 workers to threads.

    .venv/bin/python benchmarks/scale.py      # about 10 minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parents[1]))

from benchmarks.common import machine, target  # noqa: E402

TRAIN_ROWS = 20_000
SCORE_ROWS = 1_000_000
PARTITION_ROWS = 125_000


def table(n: int, start: int, seed: int):
    """``n`` rows of the synthetic table from id ``start`` on, a second apart."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    latent = rng.normal(size=(n, 3))
    mix = rng.normal(size=(3, 16))
    values = latent @ mix + 0.1 * rng.normal(size=(n, 16))
    frame = pd.DataFrame(values.astype("float32"), columns=[f"x{i}" for i in range(16)])
    frame.insert(0, "id", np.arange(start, start + n).astype(str))
    frame.insert(
        1,
        "ts",
        pd.Timestamp("2026-11-01", tz="UTC")
        + pd.to_timedelta(np.arange(start, start + n), unit="s"),
    )
    frame["kind"] = rng.choice([f"k{i}" for i in range(8)], n)
    return frame


def config(home: Path, source: Path, **extra):
    from tasks.config import build_config

    return build_config(
        {
            "home": str(home),
            "dataset": "scale",
            "source": {"path": str(source), "entity_id": "id", "timestamp": "ts"},
            "model": {"code_size": 4},
            "train": {"epochs": 2, "patience": 0},
            "partition_rows": PARTITION_ROWS,
            **extra,
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rows", type=int, default=SCORE_ROWS)
    args = parser.parse_args()

    from distributed import LocalCluster
    from prefect.testing.utilities import prefect_test_harness

    from feature_store import load_table
    from flows.ingest import ingest_source
    from flows.partitions import run_partitioned
    from flows.reduce_features import reduce_features
    from stores import resolve_stores
    from tasks.runners import worker_env
    from tasks.score import load_champion, scoring_job

    print(machine())
    with tempfile.TemporaryDirectory() as tmp, prefect_test_harness(server_startup_timeout=180):
        root = Path(tmp)
        source = root / "source"
        source.mkdir()
        table(TRAIN_ROWS, 0, 1).to_parquet(source / "day1.parquet")
        home = root / "home"
        reduce_features(config(home, source))
        table(args.rows, TRAIN_ROWS, 2).to_parquet(source / "day2.parquet", row_group_size=65_536)
        st = resolve_stores(home)
        cfg = config(home, source)
        ingested = ingest_source(cfg, st)
        champion = load_champion(cfg, st)
        tbl = load_table("scale", st)
        before = tbl.current_snapshot().snapshot_id
        print(f"set-up done: {args.rows:,} new rows ingested, champion v{champion.version}")

        parts: set[int] = set()

        def timed(cfg_run) -> float:
            best = float("inf")
            for _ in range(args.runs):
                job = scoring_job(ingested, champion, cfg, st)
                started = time.perf_counter()
                committed = run_partitioned(job, cfg_run)
                best = min(best, time.perf_counter() - started)
                assert committed.rows == args.rows, (committed.rows, args.rows)
                parts.add(committed.partitions)
                load_table("scale", st).manage_snapshots().set_current_snapshot(before).commit()
            return args.rows / best

        rates = {"threads": timed(cfg)}
        print(f"threads: {rates['threads']:,.0f} rows/s")
        for workers in (1, 2):
            with LocalCluster(
                n_workers=workers,
                threads_per_worker=1,
                processes=True,
                dashboard_address=None,
                env=worker_env(),
            ) as cluster:
                run_cfg = config(
                    home, source, task_runner="dask", dask_address=cluster.scheduler_address
                )
                rates[f"dask-{workers}"] = timed(run_cfg)
            print(f"dask, {workers} worker process(es): {rates[f'dask-{workers}']:,.0f} rows/s")

        print(f"partitions a run: {sorted(parts)}")
    ratio = rates["dask-2"] / rates["threads"]
    print(
        f"2 Dask workers / threads: {ratio:.2f}x; 2 / 1 Dask workers: "
        f"{rates['dask-2'] / rates['dask-1']:.2f}x"
    )
    print(target("dask_2_workers_vs_threads_rows_per_s", ratio, 1.0, fmt="{:.2f}"))


if __name__ == "__main__":
    main()
