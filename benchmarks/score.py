"""Scoring speed and memory: raw rows through the champion into the Iceberg feature table.

Set-up (not timed): a deep autoencoder (code 32) is trained for 2 epochs on MNIST's 60,000
training images with aepipe's own stages and registered as champion in a temporary home;
its raw rows (entity id, event time, 784 uint8 pixels) are repeated into Parquet inputs of
100,000 and 1,000,000 rows with unique entity ids.

Timed, each in a fresh process:
- aepipe: ``tasks.score.score_new_rows`` (the score-features flow's task): Parquet batches ->
  the champion's normalizer -> encoder -> one atomic Iceberg append;
- plain: ``mlflow.pyfunc.load_model("models:/...@champion").predict`` on pandas chunks of the
  same file, each chunk's output written with pandas ``to_parquet``.
Rows/s of aepipe over plain at 1M rows, and aepipe's peak RSS (``ru_maxrss``) at 1M over 100k.

    .venv/bin/python benchmarks/score.py     # about 4 minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parents[1]))

from benchmarks.common import require_dataset, run_worker, target  # noqa: E402

CHUNK_ROWS = 16_384
MODEL_NAME = "aepipe-mnist-bench"


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _config(home: str, source: str, dataset: str):
    from tasks.config import build_config

    return build_config(
        {
            "home": home,
            "dataset": dataset,
            "registered_model": MODEL_NAME,
            "source": {"path": source},
            "model": {"code_size": 32},
            "train": {"epochs": 2, "batch_size": 256, "patience": 0},
        }
    )


def worker_setup(home: str, inputs: str) -> dict:
    """Train and register the champion; write the 100k and 1M row raw inputs."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from stores import resolve_stores
    from tasks.ingest import ingest_source
    from tasks.normalize import normalize_dataset
    from tasks.register import register_model
    from tasks.train import train_autoencoder

    images = require_dataset("mnist") / "train-images-idx3-ubyte.gz"
    cfg = _config(home, str(images), "mnist")
    st = resolve_stores(home)
    t0 = time.perf_counter()
    ingested = ingest_source(cfg, st)
    data = normalize_dataset(ingested, cfg)
    trained = train_autoencoder(data, cfg, st)
    registered = register_model(trained, ingested, data, cfg, st)
    setup_s = time.perf_counter() - t0
    raw = pq.read_table(ingested.path).drop_columns(["label"])
    sizes = {}
    for n in (100_000, 1_000_000):
        path = Path(inputs) / f"raw-{n}.parquet"
        with pq.ParquetWriter(path, raw.schema) as writer:
            done, rep = 0, 0
            while done < n:
                part = raw.slice(0, min(raw.num_rows, n - done))
                ids = pc.binary_join_element_wise(
                    pa.scalar(f"r{rep}"), part.column("entity_id"), "-"
                )
                writer.write_table(part.set_column(0, "entity_id", ids))
                done += part.num_rows
                rep += 1
        sizes[n] = path.stat().st_size
    return {"version": registered.version, "setup_s": setup_s, "bytes": sizes}


def worker_aepipe(home: str, source: str, rows: str, table: str = "") -> dict:
    import pyarrow.parquet as pq

    from stores import resolve_stores
    from tasks.ingest import IngestResult
    from tasks.score import load_champion, score_new_rows

    st = resolve_stores(home)
    cfg = _config(home, source, table or f"bench_{rows}")
    champion = load_champion(cfg, st)
    features = [c for c in pq.read_schema(source).names if c.startswith("pixel")]
    ingested = IngestResult(source, int(rows), features, False, "bench", "")
    t0 = time.perf_counter()
    scored = score_new_rows(ingested, champion, cfg, st)
    seconds = time.perf_counter() - t0
    return {"rows": scored.rows_written, "seconds": seconds, "rss_mb": peak_rss_mb()}


def worker_plain(home: str, source: str, out: str) -> dict:
    import mlflow
    import pyarrow.parquet as pq

    from stores import resolve_stores

    mlflow.set_tracking_uri(resolve_stores(home).tracking_uri)
    model = mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}@champion")
    t0 = time.perf_counter()
    rows = 0
    for i, batch in enumerate(pq.ParquetFile(source).iter_batches(batch_size=CHUNK_ROWS)):
        result = model.predict(batch.to_pandas())
        result.to_parquet(Path(out) / f"part-{i:05d}.parquet")
        rows += len(result)
    return {"rows": rows, "seconds": time.perf_counter() - t0, "rss_mb": peak_rss_mb()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        kind, *rest = args.worker
        fn = {"setup": worker_setup, "aepipe": worker_aepipe, "plain": worker_plain}[kind]
        print(json.dumps(fn(*rest)))
        return

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        home, inputs = root / "home", root / "inputs"
        inputs.mkdir()
        env = {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
        setup = run_worker(HERE, "setup", str(home), str(inputs), env=env)
        print(
            f"set-up {setup['setup_s']:.0f} s: champion v{setup['version']}; inputs "
            + ", ".join(f"{int(n):,} rows {b / 1e6:.0f} MB" for n, b in setup["bytes"].items()),
            flush=True,
        )
        small, big = str(inputs / "raw-100000.parquet"), str(inputs / "raw-1000000.parquet")
        ours_small = run_worker(HERE, "aepipe", str(home), small, "100000", env=env)
        ours_big = run_worker(HERE, "aepipe", str(home), big, "1000000", env=env)
        (root / "plain").mkdir()
        plain = run_worker(HERE, "plain", str(home), big, str(root / "plain"), env=env)
        for name, r in (
            ("aepipe 100k", ours_small),
            ("aepipe 1M", ours_big),
            ("pyfunc + pandas 1M", plain),
        ):
            print(
                f"{name:20s} {r['rows']:9,d} rows {r['seconds']:7.1f} s "
                f"{r['rows'] / r['seconds']:9,.0f} rows/s  peak RSS {r['rss_mb']:6.0f} MB"
            )
        speed = (ours_big["rows"] / ours_big["seconds"]) / (plain["rows"] / plain["seconds"])
        growth = ours_big["rss_mb"] / ours_small["rss_mb"]
        print(f"ratio aepipe / plain (1M rows): {speed:.2f}x; aepipe RSS 1M / 100k: {growth:.2f}")
    print(target("score_speed_vs_pyfunc_pandas", speed, 5.0, fmt="{:.2f}"))
    print(target("score_rss_1m_over_100k", growth, 1.2, higher_is_better=False, fmt="{:.2f}"))


if __name__ == "__main__":
    main()
