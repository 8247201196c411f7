"""Orchestration overhead: the full pipeline on MNIST as the Prefect flow vs plain functions.

Both run the same stages on MNIST's 60,000 training images (ingest, normalize, train a deep
autoencoder for a few epochs, register in MLflow, materialize the Iceberg feature table,
report), each in a fresh process with its own empty home, so nothing is cached:
- plain: the stage functions called in sequence (``ingest_source``, ``normalize_dataset``,
  ``train_autoencoder``, ``register_model``, ``materialize_features``, ``summarize``);
- flow: ``reduce_features`` (Prefect's temporary local server started by the run itself,
  task runs, state tracking, result persistence, artifacts), on a Prefect home whose
  database exists, as for every run after the first (a trivial flow creates it first);
- the same flow against a Prefect server that is already up, as deployment runs are;
- what a user waits for, each a whole process timed from its start (imports included): the
  plain functions' script against ``aepipe run`` with the same settings, which starts a
  Prefect server of its own while it checks the stores and imports (its home folder exists,
  empty, as for every scheduled run after the first; ``--process-only`` runs just these).
Each contender runs ``--runs`` times (3), each in a fresh process and home; the fastest
counts. The temporary server's TARGET is the user's command (``aepipe run``); the in-process
flow's ratio is printed beside it.

    .venv/bin/python benchmarks/overhead.py     # about 20 minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parents[1]))

from benchmarks.common import machine, require_dataset, run_worker, target  # noqa: E402


def _config(home: str, epochs: int):
    from tasks.config import build_config

    images = require_dataset("mnist") / "train-images-idx3-ubyte.gz"
    return build_config(
        {
            "home": home,
            "dataset": "mnist",
            "source": {"path": str(images)},
            "model": {"code_size": 32},
            "train": {"epochs": epochs, "batch_size": 256, "patience": 0},
        }
    )


def _flags(home: str, epochs: str) -> list[str]:
    """``aepipe run``'s command line for :func:`_config`'s settings."""
    images = require_dataset("mnist") / "train-images-idx3-ubyte.gz"
    sets = {
        "home": home,
        "dataset": "mnist",
        "source.path": str(images),
        "model.code_size": "32",
        "train.epochs": epochs,
        "train.batch_size": "256",
        "train.patience": "0",
    }
    return [arg for key, value in sets.items() for arg in ("--set", f"{key}={value}")]


def worker_plain(home: str, epochs: str) -> dict:
    from flows.ingest import ingest_source
    from stores import resolve_stores
    from tasks.materialize import materialize_features
    from tasks.normalize import normalize_dataset
    from tasks.register import register_model
    from tasks.report import summarize
    from tasks.train import train_autoencoder

    cfg = _config(home, int(epochs))
    t0 = time.perf_counter()
    st = resolve_stores(cfg.home)
    ingested = ingest_source(cfg, st)
    data = normalize_dataset(ingested, cfg)
    trained = train_autoencoder(data, cfg, st)
    registered = register_model(trained, ingested, data, cfg, st)
    written = materialize_features(data, trained, registered, cfg, st)
    summary = summarize(ingested, data, trained, registered, written, st)
    return {"seconds": time.perf_counter() - t0, "rows": summary.rows_written}


def worker_flow(home: str, epochs: str) -> dict:
    from flows.reduce_features import reduce_features

    cfg = _config(home, int(epochs))
    t0 = time.perf_counter()
    summary = reduce_features(cfg)
    return {"seconds": time.perf_counter() - t0, "rows": summary.rows_written}


@contextlib.contextmanager
def running_server(folder: Path, env: dict[str, str]) -> Iterator[str]:
    """A ``prefect server start`` on a free loopback port for the duration; yields its API."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    api = f"http://127.0.0.1:{port}/api"
    log = (folder / "server.log").open("w")
    server = subprocess.Popen(
        [str(Path(sys.executable).with_name("prefect")), "server", "start", "--port", str(port)],
        env={**os.environ, **env},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{api}/health", timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("prefect server did not start") from None
                time.sleep(1)
        yield api
    finally:
        server.terminate()
        server.wait(30)


def worker_warmup() -> dict:
    """A trivial flow, so Prefect's database exists (migrated) as it does after a first run."""
    from prefect import flow

    @flow
    def nothing() -> int:
        return 0

    t0 = time.perf_counter()
    nothing()
    return {"seconds": time.perf_counter() - t0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", nargs="*", help=argparse.SUPPRESS)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--runs", type=int, default=3, help="fresh processes per contender")
    parser.add_argument(
        "--process-only", action="store_true", help="only the two whole-process contenders"
    )
    args = parser.parse_args()
    if args.worker is not None:
        kind, *rest = args.worker
        fn = {"plain": worker_plain, "flow": worker_flow, "warmup": worker_warmup}[kind]
        print(json.dumps(fn(*rest)))
        return

    print(machine(), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        env = {
            "MLFLOW_DISABLE_TELEMETRY": "true",
            "DO_NOT_TRACK": "true",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_HOME": str(Path(tmp) / "prefect"),
            "PREFECT_LOGGING_LEVEL": "WARNING",
        }
        first = run_worker(HERE, "warmup", env=env)
        print(
            f"first flow run on a new Prefect home (creates its database): {first['seconds']:.1f} s"
        )
        ep = str(args.epochs)

        def fastest(kind: str, name: str, extra: dict[str, str]) -> dict:
            runs = [
                run_worker(HERE, kind, str(Path(tmp) / f"{name}{k}"), ep, env={**env, **extra})
                for k in range(args.runs)
            ]
            return {**min(runs, key=lambda r: r["seconds"]), "all": [r["seconds"] for r in runs]}

        plain = flow = served = None
        if not args.process_only:
            plain = fastest("plain", "plain", {})
            flow = fastest("flow", "flow", {})
            # what a deployment run sees: a Prefect server that is already up
            with running_server(Path(tmp), env) as api:
                served = fastest("flow", "served", {"PREFECT_API_URL": api})

        def whole(kind: str) -> dict:  # a whole process, as a user waits for it
            times = []
            for k in range(args.runs):
                home = str(Path(tmp) / f"{kind}-process{k}")
                # a home folder that exists (empty: nothing cached), as for every scheduled
                # run after the first: `aepipe run` starts its server while it checks
                Path(home).mkdir()
                t0 = time.perf_counter()
                if kind == "plain":
                    run_worker(HERE, "plain", home, ep, env=env)
                else:
                    done = subprocess.run(
                        [str(Path(sys.executable).with_name("aepipe")), "run", *_flags(home, ep)],
                        env={**os.environ, **env},
                        capture_output=True,
                        text=True,
                    )
                    if done.returncode != 0:
                        raise RuntimeError(f"aepipe run failed:\n{done.stderr[-3000:]}")
                times.append(time.perf_counter() - t0)
            return {"seconds": min(times), "all": times, "rows": 60000}

        plain_process = whole("plain")
        cli_process = whole("aepipe run")
    for name, r in (
        ("plain functions", plain),
        ("Prefect flow", flow),
        ("  on a running server", served),
        ("plain script (process)", plain_process),
        ("aepipe run (process)", cli_process),
    ):
        if r is not None:
            spread = ", ".join(f"{v:.1f}" for v in r["all"])
            print(f"{name:22s} {r['rows']:6d} rows  {r['seconds']:6.1f} s  (runs: {spread} s)")
    ratio = None
    if plain is not None and flow is not None and served is not None:
        served_ratio = served["seconds"] / plain["seconds"]
        ratio = flow["seconds"] / plain["seconds"]
        print(
            f"on a running server the flow takes {served['seconds'] - plain['seconds']:+.1f} s "
            f"({served_ratio:.3f}x); with Prefect's temporary server, started by the flow, "
            f"{flow['seconds'] - plain['seconds']:+.1f} s ({ratio:.3f}x)"
        )
        print(
            target(
                "orchestration_overhead_running_server",
                served_ratio,
                1.10,
                higher_is_better=False,
                fmt="{:.3f}",
            )
        )
    user_ratio = cli_process["seconds"] / plain_process["seconds"]
    in_process = f"; the flow called in process: {ratio:.3f}x" if ratio is not None else ""
    print(
        f"as a user waits for it: aepipe run {cli_process['seconds']:.1f} s, the plain script "
        f"{plain_process['seconds']:.1f} s ({user_ratio:.3f}x{in_process})"
    )
    print(
        target(
            "orchestration_overhead_temporary_server",
            user_ratio,
            1.10,
            higher_is_better=False,
            fmt="{:.3f}",
        )
    )


if __name__ == "__main__":
    main()
