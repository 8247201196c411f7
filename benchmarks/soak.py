"""Long life (issue 22.5): one long-lived process, as a Prefect worker is, runs the
``score-features`` flow again and again on one table as new rows arrive (time compressed:
a run every second or two instead of every hour), with the ``maintain-features`` flow every
``--maintain-every`` runs (retention 0: every snapshot but the current one and the last
before the cutoff expires; a version's appended files compacted once there are 4). After
each run it measures the process's resident memory, the table's snapshots and metadata
files, and the time ``read_features`` takes (best of 3).

Targets: memory grows at most 10 % from run 20 to the last; snapshots and metadata files
stay under fixed caps (:func:`caps`: what upkeep and the table's properties allow, however
many runs); read time (a run's: the median of it and the 4 before) at most 2x the first run's
(upkeep compacts the small files each run appends); no row lost or twice.

    .venv/bin/python -m benchmarks.soak              # 200 runs: the issue's soak
    .venv/bin/python -m benchmarks.soak --runs 40    # about what make test runs
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import machine, rss_mb, target
from benchmarks.load import customers
from feature_store.catalog import MERGE_MANIFESTS_AT, METADATA_VERSIONS

FIRST_ROWS, NEW_ROWS = 1000, 20  # the table's rows at first; rows arriving before each run
SETTLED = 20  # memory is compared from this run on (caches and pools fill in the first)


def caps(maintain_every: int, versions: int, merge_at: int) -> tuple[int, int]:
    """The most snapshots and metadata files the table may hold between upkeeps: the two
    an upkeep keeps plus a run's each since (and upkeep's compaction); metadata files kept
    (``versions`` + the current), a manifest list per snapshot, the data manifests below the
    merge count (and as many more, merged ones the older kept snapshot still lists)."""
    snapshots = maintain_every + 3
    return snapshots, versions + 1 + 2 * snapshots + 2 * (merge_at + 1)


@dataclass
class SoakReport:
    """Per run: resident memory (MB), read seconds, snapshots and metadata files of the
    feature table; and the rows it lacks or holds twice at the end."""

    rss_mb: list[float] = field(default_factory=list)
    read_seconds: list[float] = field(default_factory=list)
    snapshots: list[int] = field(default_factory=list)
    metadata_files: list[int] = field(default_factory=list)
    data_files: list[int] = field(default_factory=list)  # data files a read of it opens
    rows_lost: int = 0  # source rows missing from the table at the end
    rows_twice: int = 0  # rows in the table more than once

    def rss_growth(self) -> float:
        """Growth of resident memory from run ``SETTLED`` (half the runs in a short soak)
        to the last."""
        start = self.rss_mb[min(SETTLED, len(self.rss_mb) // 2) - 1]
        return (self.rss_mb[-1] - start) / start

    def read_ratio(self) -> float:
        """The slowest read time over the first run's, each run's time the median of it and
        the 4 runs before it (a single run's time, a few ms, jumps with the machine)."""
        import statistics

        times = self.read_seconds
        smoothed = [statistics.median(times[max(0, i - 4) : i + 1]) for i in range(len(times))]
        return max(smoothed) / times[0]


def _read_seconds(name: str, home: Path) -> float:
    from feature_store import read_features

    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        read_features(name, home=home)
        best = min(best, time.perf_counter() - start)
    return best


def soak(
    folder: Path,
    runs: int,
    maintain_every: int = 5,
    versions: int = METADATA_VERSIONS,
    merge_at: int = MERGE_MANIFESTS_AT,
) -> SoakReport:
    """Train once, then ``runs`` scoring runs of ``NEW_ROWS`` new rows each in this process,
    upkeep every ``maintain_every`` runs (under a Prefect server the caller started). The
    table keeps ``versions`` old metadata files and merges manifests at ``merge_at`` (lower
    than the defaults: a short soak reaches its bounds)."""
    from feature_store import load_table, read_features
    from flows.maintain_features import maintain_features
    from flows.reduce_features import reduce_features
    from flows.score_features import score_features
    from tasks.config import build_config

    home, source = folder / "home", folder / "soak.csv"
    frame = customers(FIRST_ROWS, 0, 0)
    frame.to_csv(source, index=False)
    settings = {
        "home": str(home),
        "dataset": "soak",
        "source": {"path": str(source), "entity_id": "customer", "timestamp": "ts"},
        "model": {"code_size": 2, "params": {"hidden": [16]}},
        "train": {"epochs": 3, "lr": 3e-3, "patience": 0},
        "maintain": {"retain_days": 0, "orphan_age_hours": 0},
    }
    cfg = build_config(settings)
    reduce_features(cfg)
    with load_table("soak", home).transaction() as tx:
        tx.set_properties(
            {
                "write.metadata.previous-versions-max": str(versions),
                "commit.manifest.min-count-to-merge": str(merge_at),
            }
        )
    report = SoakReport()
    metadata = home / "warehouse" / "aepipe" / "soak" / "metadata"
    for i in range(runs):
        new = customers(NEW_ROWS, FIRST_ROWS + i * NEW_ROWS, 1 + i)
        frame = pd.concat([frame, new], ignore_index=True)
        frame.to_csv(source, index=False)
        score_features(cfg)
        if (i + 1) % maintain_every == 0:
            maintain_features(cfg)
        gc.collect()
        report.rss_mb.append(rss_mb())
        report.read_seconds.append(_read_seconds("soak", home))
        report.snapshots.append(len(load_table("soak", home).snapshots()))
        report.metadata_files.append(sum(1 for _ in metadata.iterdir()))
        report.data_files.append(sum(1 for _ in load_table("soak", home).scan().plan_files()))
    table = read_features("soak", home=home)
    report.rows_twice = int(table.duplicated(["entity_id", "event_timestamp"]).sum())
    report.rows_lost = int((~frame["customer"].isin(set(table["entity_id"]))).sum())
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=200, help="scoring runs (default 200)")
    parser.add_argument("--maintain-every", type=int, default=5, help="runs between upkeeps")
    args = parser.parse_args()
    print(machine())
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120), tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        report = soak(Path(tmp), args.runs, args.maintain_every)
        seconds = time.perf_counter() - started
    out = Path(__file__).parent / "out"
    out.mkdir(exist_ok=True)
    (out / "soak.json").write_text(json.dumps(dataclasses.asdict(report)))
    every = max(1, args.runs // 10)
    print(f"{args.runs} scoring runs in {seconds:.0f} s; every {every}th run:")
    print("run  rss_MB  read_ms  snapshots  metadata_files")
    for i in range(every - 1, args.runs, every):
        print(
            f"{i + 1:4d} {report.rss_mb[i]:7.0f} {report.read_seconds[i] * 1e3:8.1f} "
            f"{report.snapshots[i]:10d} {report.metadata_files[i]:15d}"
        )
    print(target("soak_rss_growth_after_run_20", report.rss_growth(), 0.10, False, "{:.3f}"))
    print(target("soak_read_latency_ratio", report.read_ratio(), 2.0, False, "{:.2f}"))
    most = caps(args.maintain_every, METADATA_VERSIONS, MERGE_MANIFESTS_AT)
    for name, counts, cap in (
        ("snapshots", report.snapshots, most[0]),
        ("metadata_files", report.metadata_files, most[1]),
    ):
        print(target(f"soak_most_{name}", max(counts), cap, False, "{:.0f}"))
    print(target("soak_rows_lost", report.rows_lost, 0, False, "{:.0f}"))
    print(target("soak_rows_twice", report.rows_twice, 0, False, "{:.0f}"))


if __name__ == "__main__":
    main()
