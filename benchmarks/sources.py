"""Sources where real data lives: a PostgreSQL table and an Iceberg table, through aepipe's
readers, against the plain Arrow path a competent user would write.

1. A 15-column PostgreSQL table (ids, times, integers, numerics, floats with NULLs, text
   categories, booleans), generated in the database at ``--rows`` (1M) and 10x: aepipe's
   ingest at 1x (raw Parquet with roles, every row typed and checked, duplicate ids found,
   the normalizer's statistics gathered) against ADBC's ``fetch_arrow_table`` +
   ``pyarrow.parquet.write_table`` (the Arrow-native driver aepipe uses; connectorx reads
   the same wire protocol into Arrow). Rows/s of each; memory: aepipe's peak RSS growth
   above its post-import baseline at 10x over 1x.
2. An Iceberg table of ``--rows`` rows (the PostgreSQL table's, less its numeric column),
   the last 1 % appended in a second commit: aepipe's incremental ingest of the appended
   rows against its full ingest of the table.
Each contender runs ``--repeat`` times (3), each in a fresh process; the fastest run counts,
memory growth is the largest of its runs. PostgreSQL is the machine's own (``initdb``) or
pgserver's, started here on 127.0.0.1 and stopped after.

    .venv/bin/python benchmarks/sources.py                 # about 6 minutes on 2 cores
    .venv/bin/python benchmarks/sources.py --rows 100000   # a quick look
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parents[1]))

from benchmarks.common import machine, peak_rss_mb, rss_mb, run_worker, target  # noqa: E402

TABLE_SQL = """
CREATE TABLE {name} AS SELECT
  'c' || i AS customer_id,
  timestamptz '2024-01-01' + i * interval '1 second' AS updated_at,
  (i % 90) + 18 AS age,
  (i * 7919 % 100000)::numeric(12, 2) / 100 AS balance,
  CASE WHEN i % 11 = 0 THEN NULL ELSE (i % 1000) / 7.0::float8 END AS spend,
  (i % 37) * 1.5::float8 AS visits,
  (ARRAY['north','south','east','west'])[1 + i % 4] AS region,
  (ARRAY['gold','silver','bronze'])[1 + i % 3] AS tier,
  'p' || (i % 25) AS product,
  i % 2 = 0 AS active,
  i % 5 = 0 AS churned,
  (i % 13) * 2.25::float8 AS tenure,
  CASE WHEN i % 17 = 0 THEN NULL ELSE 'ch' || (i % 6) END AS channel,
  (i * 31 % 1000) / 10.0::float8 AS score_a,
  (i * 17 % 500) / 5.0::float8 AS score_b
FROM generate_series(1::bigint, {rows}) AS i
"""


def worker_aepipe(uri: str, table: str, out: str) -> dict:
    """aepipe's ingest of the table into raw Parquet (roles, typing, checks). The driver is
    imported first, as the peer imports it before its clock starts."""
    import adbc_driver_postgresql.dbapi  # noqa: F401

    from flows.ingest import ingest_source
    from stores import resolve_stores
    from tasks.config import build_config

    source = {"path": uri, "table": table, "entity_id": "customer_id", "timestamp": "updated_at"}
    cfg = build_config({"dataset": "bench", "source": source})
    base = rss_mb()
    t0 = time.perf_counter()
    ingested = ingest_source(cfg, resolve_stores(out))
    seconds = time.perf_counter() - t0
    return {"rows": ingested.rows, "seconds": seconds, "growth_mb": peak_rss_mb() - base}


def worker_adbc(uri: str, table: str, out: str) -> dict:
    """The plain Arrow path: ADBC's fetch_arrow_table, then one Parquet write."""
    import pyarrow.parquet as pq
    from adbc_driver_postgresql import dbapi

    base = rss_mb()
    t0 = time.perf_counter()
    with dbapi.connect(uri.replace("+psycopg2", "")) as conn, conn.cursor() as cur:
        cur.execute(f"SELECT * FROM {table}")
        data = cur.fetch_arrow_table()
    Path(out).mkdir(parents=True, exist_ok=True)
    pq.write_table(data, Path(out) / "plain.parquet")
    seconds = time.perf_counter() - t0
    return {"rows": data.num_rows, "seconds": seconds, "growth_mb": peak_rss_mb() - base}


def worker_iceberg(catalog: str, since: str, out: str) -> dict:
    """aepipe's ingest of the Iceberg table: whole (``since`` empty) or past a snapshot;
    pyiceberg imported before the clock starts (both reads need it alike)."""
    import pyiceberg.catalog.sql
    import pyiceberg.io.pyarrow  # noqa: F401

    from flows.ingest import ingest_source
    from stores import resolve_stores
    from tasks.config import build_config

    source = {"path": "bench.events", "format": "iceberg", "catalog": catalog}
    cfg = build_config({"dataset": "events", "source": {**source, "entity_id": "customer_id"}})
    t0 = time.perf_counter()
    ingested = ingest_source(cfg, resolve_stores(out), since=since or None)
    return {"rows": ingested.rows, "seconds": time.perf_counter() - t0}


def best_of(repeat: int, kind: str, *args: str) -> dict:
    """The fastest of ``repeat`` fresh-process runs, with the largest memory growth."""
    runs = [run_worker(HERE, kind, *args[:-1], f"{args[-1]}/run{k}") for k in range(repeat)]
    best = min(runs, key=lambda r: r["seconds"])
    return {**best, "growth_mb": max(r.get("growth_mb", 0.0) for r in runs)}


def make_iceberg(root: Path, uri: str, rows: int) -> tuple[str, str]:
    """An Iceberg table ``bench.events`` of the PostgreSQL table's first ``rows`` rows, the
    last 1 % of them appended in a second commit; the catalog URI and the snapshot before
    that append."""
    from adbc_driver_postgresql import dbapi
    from pyiceberg.catalog import load_catalog

    catalog_uri = f"sqlite:///{root / 'lake.db'}"
    lake = load_catalog("aepipe", type="sql", uri=catalog_uri, warehouse=(root / "lake").as_uri())
    lake.create_namespace("bench")
    with dbapi.connect(uri.replace("+psycopg2", "")) as conn, conn.cursor() as cur:
        cur.execute(f"SELECT * FROM big LIMIT {rows}")
        data = cur.fetch_arrow_table()
    data = data.drop_columns(["balance"])  # PostgreSQL's numeric arrives opaque: no Iceberg type
    table = lake.create_table("bench.events", schema=data.schema)
    kept = data.num_rows - data.num_rows // 100
    table.append(data.slice(0, kept))
    before = table.current_snapshot().snapshot_id
    table.append(data.slice(kept))  # 1 % of the rows, in a second commit
    return catalog_uri, str(before)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", nargs="*", help=argparse.SUPPRESS)
    parser.add_argument(
        "--rows", type=int, default=1_000_000, help="the 1x size (memory is compared at 10x)"
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs per contender; best counts")
    args = parser.parse_args()
    if args.worker is not None:
        kind, *rest = args.worker
        fn = {"aepipe": worker_aepipe, "adbc": worker_adbc, "iceberg": worker_iceberg}[kind]
        print(json.dumps(fn(*rest)))
        return

    import sqlalchemy as sa

    from tests.services import postgres

    print(machine(), flush=True)
    with tempfile.TemporaryDirectory() as tmp, postgres(Path(tmp) / "pg") as uri:
        root = Path(tmp)
        engine = sa.create_engine(uri)
        with engine.begin() as conn:
            for name, rows in (("small", args.rows), ("big", 10 * args.rows)):
                conn.execute(sa.text(TABLE_SQL.format(name=name, rows=rows)))
        engine.dispose()
        adbc_uri = uri.replace("+psycopg2", "")
        ours1 = best_of(args.repeat, "aepipe", adbc_uri, "small", str(root / "a1"))
        plain1 = best_of(args.repeat, "adbc", adbc_uri, "small", str(root / "p1"))
        ours10 = best_of(
            1 if args.rows >= 10**6 else args.repeat, "aepipe", adbc_uri, "big", str(root / "a10")
        )  # (memory only: one run of 10M rows suffices)
        for name, r in (
            ("aepipe 1x", ours1),
            ("ADBC+Parquet 1x", plain1),
            ("aepipe 10x", ours10),
        ):
            print(
                f"postgres {name:17s} {r['rows']:8d} rows {r['seconds']:7.2f} s "
                f"{r['rows'] / r['seconds']:9.0f} rows/s  memory +{r['growth_mb']:5.0f} MB",
                flush=True,
            )
        speed = plain1["seconds"] / ours1["seconds"]
        growth = ours10["growth_mb"] / max(ours1["growth_mb"], 1.0)
        print(f"ratio aepipe / ADBC+Parquet (rows/s, 1x): {speed:.2f}x; memory 10x/1x {growth:.2f}")

        catalog, before = make_iceberg(root, uri, args.rows)
        full = best_of(args.repeat, "iceberg", catalog, "", str(root / "i"))
        delta = best_of(args.repeat, "iceberg", catalog, before, str(root / "d"))
        for name, r in (("full read", full), ("1 % appended", delta)):
            print(f"iceberg  {name:17s} {r['rows']:8d} rows {r['seconds']:7.2f} s")
        share = delta["seconds"] / full["seconds"]
        print(f"ratio incremental / full (seconds): {share:.3f}")
        lines = [
            target("postgres_ingest_speed_vs_adbc", speed, 0.8, fmt="{:.2f}"),
            target("postgres_ingest_memory_growth_10x", growth, 1.5, False, fmt="{:.2f}"),
            target("iceberg_incremental_vs_full", share, 0.1, False, fmt="{:.3f}"),
        ]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
