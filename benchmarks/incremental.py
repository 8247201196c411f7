"""Incremental scoring of a changing table: 1 % of the entities updated in a 1M-row source.

Set-up (not timed): a customer table of 1,000,000 rows (12 numeric and 3 categorical
columns, entity id and update time) and the next day's source, where 10,000 of the entities
(1 %) have a new version, scattered through the file (no row group is free of them). Both
are ingested with aepipe's own stage; a deep autoencoder is trained for one epoch on the
first and registered as champion; the first day is scored into each incremental table.

Timed, in this process, best of ``--runs`` (3), each on its own table:
- incremental: ``tasks.score.score_new_rows`` on the second day, its table holding the first
  day: the (entity id, event time) pairs the table lacks are found by a hash join and only
  those rows are normalized, encoded and appended;
- full rescoring: the same call on an empty table: every row of the second day;
- append-only fast path (a labelled extra line): the source declared append-only, the new
  versions appended at the end of the file instead of scattered.

    .venv/bin/python benchmarks/incremental.py      # about 10 minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parents[1]))

from benchmarks.common import machine, target  # noqa: E402

MODEL_NAME = "aepipe-incremental-bench"
T0 = datetime(2026, 6, 1, tzinfo=UTC)


def _config(home: str, source: str, dataset: str, append_only: bool = False):
    from tasks.config import build_config

    return build_config(
        {
            "home": home,
            "dataset": dataset,
            "registered_model": MODEL_NAME,
            "source": {
                "path": source,
                "entity_id": "customer_id",
                "timestamp": "updated_at",
                "append_only": append_only,
            },
            "train": {"epochs": 1, "batch_size": 1024, "patience": 0},
        }
    )


def _customers(n: int, first_id: int, when: datetime, seed: int):
    import numpy as np
    import pyarrow as pa

    rng = np.random.default_rng(seed)
    cols = {
        "customer_id": pa.array([f"c{i}" for i in range(first_id, first_id + n)]),
        "updated_at": pa.array([when] * n if n else [], pa.timestamp("us", tz="UTC")),
    }
    for j in range(12):
        cols[f"x{j}"] = pa.array(rng.gamma(2.0 + j % 3, 10.0, n))
    for j, levels in enumerate((["a", "b", "c"], ["n", "s", "e", "w"], ["bronze", "gold"])):
        cols[f"cat{j}"] = pa.array(rng.choice(levels, n))
    return pa.table(cols)


def make_sources(folder: Path, rows: int, updates: int) -> dict[str, Path]:
    """Day one, and day two with ``updates`` new versions scattered or appended."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    day1 = _customers(rows, 0, T0, 1)
    rng = np.random.default_rng(2)
    updated_ids = rng.choice(rows, updates, replace=False)
    new = _customers(updates, 0, T0 + timedelta(days=1), 3)
    new = new.set_column(0, "customer_id", pa.array([f"c{i}" for i in updated_ids]))
    appended = pa.concat_tables([day1, new])
    order = rng.permutation(appended.num_rows)
    paths = {
        "day1": folder / "day1.parquet",
        "scattered": folder / "day2-scattered.parquet",
        "appended": folder / "day2-appended.parquet",
    }
    pq.write_table(day1, paths["day1"])
    pq.write_table(appended.take(order), paths["scattered"])
    pq.write_table(appended, paths["appended"])
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--updates", type=float, default=0.01, help="share of entities updated")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    print(machine())

    from flows.ingest import ingest_source
    from stores import resolve_stores
    from tasks.normalize import normalize_dataset
    from tasks.register import register_model
    from tasks.score import load_champion, score_new_rows
    from tasks.train import train_autoencoder

    updates = int(args.rows * args.updates)
    with tempfile.TemporaryDirectory() as tmp:
        home = str(Path(tmp) / "home")
        st = resolve_stores(home)
        t0 = time.perf_counter()
        paths = make_sources(Path(tmp), args.rows, updates)
        cfg = _config(home, str(paths["day1"]), "day1")
        day1 = ingest_source(cfg, st)
        data = normalize_dataset(day1, cfg)
        trained = train_autoencoder(data, cfg, st)
        register_model(trained, day1, data, cfg, st)
        scattered = ingest_source(_config(home, str(paths["scattered"]), "scattered"), st)
        appended = ingest_source(_config(home, str(paths["appended"]), "appended"), st)
        champion = load_champion(cfg, st)
        for run in range(args.runs):  # each incremental run finds its table at day one
            for kind in ("inc", "fast"):
                score_new_rows(day1, champion, _config(home, "-", f"{kind}{run}"), st)
        print(f"set-up: {time.perf_counter() - t0:.0f} s ({args.rows} rows, {updates} updated)")

        def timed(ingested, dataset: str, append_only: bool = False) -> tuple[float, int]:
            cfg = _config(home, "-", dataset, append_only)
            start = time.perf_counter()
            scored = score_new_rows(ingested, champion, cfg, st)
            return time.perf_counter() - start, scored.rows_written

        results: dict[str, list[tuple[float, int]]] = {"inc": [], "full": [], "fast": []}
        for run in range(args.runs):
            results["inc"].append(timed(scattered, f"inc{run}"))
            results["full"].append(timed(scattered, f"full{run}"))
            results["fast"].append(timed(appended, f"fast{run}", append_only=True))
        best = {k: min(v) for k, v in results.items()}
        for name, label in (
            ("inc", "incremental (scattered updates, pair comparison)"),
            ("full", "full rescoring (every row)"),
            ("fast", "incremental, append-only fast path"),
        ):
            seconds, rows = best[name]
            runs = ", ".join(f"{s:.2f}" for s, _ in results[name])
            print(f"{label:52s} {seconds:7.2f} s  {rows:>9} rows  (runs: {runs})")
        assert best["inc"][1] == best["fast"][1] == updates, "incremental runs scored wrong rows"
        assert best["full"][1] == args.rows + updates
        ratio = best["inc"][0] / best["full"][0]
        print(
            f"incremental / full: {ratio:.3f}; append-only / full: "
            f"{best['fast'][0] / best['full'][0]:.3f}"
        )
        print(target("incremental_vs_full_rescoring", ratio, 0.1, higher_is_better=False))


if __name__ == "__main__":
    main()
