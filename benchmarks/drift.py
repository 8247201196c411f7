"""Drift detection on streams of real batches: aepipe's check against per-column tests.

Set-up (not timed): for each data set a model is trained by aepipe's own stages (ingest,
normalize, train: defaults but for a few epochs), so its ``model.json`` carries the drift
reference a scoring run checks against; the rows it never saw are ingested the same way and
form the stream's pool.
- Adult: 22,000 of the 32,561 rows (shuffled, seed 0) train the model; the other 10,561 are
  the pool. Subgroup: women who never married (about 11 % of the rows).
- MNIST: 30,000 of the training set's images of the digits 0-7 train the model; the rest
  of the training set is the pool: its other 0-7s in distribution, its 8s and 9s digits
  the model never saw. (Not the test set: its writers are others, a shift of its own.)

Streams, batches of ``--rows`` (500) rows drawn from the pool:
(a) ``--clean`` (100) in-distribution batches: the false-alarm rate;
(b) population shifts, ``--shifted`` (40) batches per size: a share of 5, 10, 20, 30 or 50 %
    of the batch is drawn from the subgroup (Adult) or the unseen digits (MNIST);
(c) ``--joint`` (50) joint-only shifts: an in-distribution batch with every column
    permuted independently, so each column's values (the marginals) are unchanged.

Contenders on every batch, both at family-wise level 0.01, and again at a matched
false-alarm rate (each contender's threshold on its smallest p-value times its number of
tests set so 1 % of its own clean batches alarm), so power is compared at equal cost:
- aepipe: what a scoring run does (``ae_models.scoring.drift.check_drift`` on the batch's model
  input, codes and calibrated scores against the model's reference; Holm's correction);
- per-column tests, what Evidently's and alibi-detect's defaults do: a two-sample KS test
  per numeric column (each pixel of an image) and a chi-square test of the level counts per
  categorical column (alibi-detect's ``TabularDrift``), against the training rows, with a
  Bonferroni correction (scipy).

    .venv/bin/python benchmarks/drift.py      # about 10 minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parents[1]))

from benchmarks.common import machine, require_dataset, target  # noqa: E402

ALPHA = 0.01
SIZES = (0.05, 0.10, 0.20, 0.30, 0.50)
ADULT_TRAIN_ROWS = 22_000
MNIST_TRAIN_ROWS = 30_000
PEER_REFERENCE_ROWS = 10_000


@dataclass
class Stream:
    """A trained model and the rows a stream draws from: ``pool`` (ingested, unseen by the
    model), which pool rows are in distribution and which shifted, the peer's reference."""

    name: str
    model: Any
    scorer: Any
    normalizer: Any
    reference: dict[str, Any]
    pool: Any  # pyarrow Table of the source columns
    clean: np.ndarray  # pool row positions in distribution
    shifted: np.ndarray  # pool row positions of the subgroup / unseen digits
    peer_reference: Any  # pyarrow Table: training rows for the per-column tests
    categorical: list[str]


def _pipeline(home: Path, dataset: str, source: Path, label: str | None, epochs: int):
    """Ingest and normalize ``source`` and train on it with aepipe's stages: the config and
    the trained model's folder."""
    from flows.ingest import ingest_source
    from stores import resolve_stores
    from tasks.config import build_config
    from tasks.normalize import normalize_dataset
    from tasks.train import train_autoencoder

    cfg = build_config(
        {
            "home": str(home),
            "dataset": dataset,
            "source": {"path": str(source), **({"label": label} if label else {})},
            "train": {"epochs": epochs, "patience": 0},
        }
    )
    st = resolve_stores(cfg.home)
    ingested = ingest_source(cfg, st)
    trained = train_autoencoder(normalize_dataset(ingested, cfg), cfg, st)
    return ingested, trained.model_dir


def _ingested(home: Path, dataset: str, source: Path, label: str | None):
    """The ingested Parquet of ``source`` as a pyarrow Table (what a scoring run reads)."""
    import pyarrow.parquet as pq

    from flows.ingest import ingest_source
    from stores import resolve_stores
    from tasks.config import build_config

    cfg = build_config(
        {
            "home": str(home),
            "dataset": dataset,
            "source": {"path": str(source), **({"label": label} if label else {})},
        }
    )
    return pq.read_table(ingest_source(cfg, resolve_stores(cfg.home)).path)


def _stream(name: str, ingested, model_dir: str, pool, clean, shifted) -> Stream:
    import pyarrow as pa
    import pyarrow.parquet as pq

    import ae_models
    from ae_models.preprocessing.normalizer import NORMALIZER_FILE, Normalizer
    from ae_models.scoring.scorer import Scorer

    model, meta = ae_models.load_model(model_dir)
    model.eval()
    normalizer = Normalizer.load(str(Path(model_dir) / NORMALIZER_FILE))
    columns = normalizer.source_columns
    train = pq.read_table(ingested.path, columns=columns)
    rng = np.random.default_rng(1)
    pick = np.sort(rng.choice(train.num_rows, min(PEER_REFERENCE_ROWS, train.num_rows), False))
    numeric = (pa.types.is_integer, pa.types.is_floating)
    categorical = [c for c in columns if not any(f(pool.schema.field(c).type) for f in numeric)]
    return Stream(
        name,
        model,
        Scorer.from_meta(meta, model_dir),
        normalizer,
        meta["drift"],
        pool.select(columns),
        clean,
        shifted,
        train.take(pick),
        categorical,
    )


def adult_stream(home: Path) -> Stream:
    """The Adult stream: a model on 22,000 rows, the other rows as the pool."""
    import pandas as pd

    raw = pd.read_csv(require_dataset("adult") / "adult.data", skipinitialspace=True)
    raw = raw.sample(frac=1.0, random_state=0).reset_index(drop=True)
    train_csv, pool_csv = home / "adult-train.csv", home / "adult-pool.csv"
    raw.iloc[:ADULT_TRAIN_ROWS].to_csv(train_csv, index=False)
    raw.iloc[ADULT_TRAIN_ROWS:].to_csv(pool_csv, index=False)
    ingested, model_dir = _pipeline(home, "adult_drift", train_csv, "Salary", epochs=10)
    pool = _ingested(home, "adult_pool", pool_csv, "Salary")
    sex = np.asarray(pool.column("sex").to_pylist(), dtype=object)
    marital = np.asarray(pool.column("marital-status").to_pylist(), dtype=object)
    subgroup = (sex == "Female") & (marital == "Never-married")
    return _stream(
        "adult", ingested, model_dir, pool, np.arange(pool.num_rows), np.flatnonzero(subgroup)
    )


def _write_npz(path: Path, images: np.ndarray, labels: np.ndarray) -> Path:
    np.savez(path, X=images.reshape(-1, 28, 28), y=labels)
    return path


def mnist_stream(home: Path) -> Stream:
    """The MNIST stream: a model on 30,000 training images of digits 0-7; the pool is the
    rest of the training set (its 0-7 in distribution, its 8s and 9s unseen). The test set
    is not the pool: its writers are not the training set's, a shift of its own."""
    from tasks.io.arrays import read_idx

    root = require_dataset("mnist")
    images = read_idx(root / "train-images-idx3-ubyte.gz")
    labels = read_idx(root / "train-labels-idx1-ubyte.gz")
    order = np.random.default_rng(0).permutation(len(labels))
    seen = order[labels[order] <= 7]
    train, rest = (
        seen[:MNIST_TRAIN_ROWS],
        np.sort(np.concatenate([seen[MNIST_TRAIN_ROWS:], order[labels[order] > 7]])),
    )
    source = _write_npz(home / "mnist-train.npz", images[train], labels[train])
    ingested, model_dir = _pipeline(home, "mnist_drift", source, None, epochs=5)
    pool_npz = _write_npz(home / "mnist-pool.npz", images[rest], labels[rest])
    pool = _ingested(home, "mnist_pool", pool_npz, None)
    digits = np.asarray(pool.column("label").to_pylist()).astype(np.int64)
    return _stream(
        "mnist", ingested, model_dir, pool, np.flatnonzero(digits <= 7), np.flatnonzero(digits > 7)
    )


def aepipe_drifted(stream: Stream, batch) -> tuple[bool, float]:
    """What a scoring run decides on ``batch`` (its model input, codes and calibrated scores
    against the model's drift reference), and the family's smallest p-value times its
    number of tests: Holm rejects something exactly when that is at most the level, so it
    is the statistic a matched false-alarm rate is calibrated on."""
    from ae_models.outputs import score_outputs
    from ae_models.preprocessing.normalizer import model_input
    from ae_models.scoring.drift import check_drift

    x = model_input(batch, stream.normalizer)
    scored = score_outputs(stream.model, x, stream.scorer, device="cpu")
    check = check_drift(stream.reference, scored.calibrated, scored.flagged, x, scored.codes)
    p = [check.score_p_value, check.rate_p_value, check.code_p_value]
    p += list(check.column_p_values.values())
    p = [v for v in p if v is not None]
    return check.drifted, min(p) * len(p)


def columns_drifted(stream: Stream, batch) -> tuple[bool, float]:
    """Per-column tests with a Bonferroni correction: two-sample KS on numeric columns,
    chi-square on categorical level counts, each against the training rows; the decision
    and the smallest p-value times the number of tests."""
    from scipy import stats

    p_values = []
    for name in batch.column_names:
        ref = stream.peer_reference.column(name).to_numpy(zero_copy_only=False)
        new = batch.column(name).to_numpy(zero_copy_only=False)
        if name in stream.categorical:
            ref, new = ref.astype(str), new.astype(str)
            levels = np.union1d(ref, new)
            table = np.array(
                [
                    [np.sum(ref == v) for v in levels],
                    [np.sum(new == v) for v in levels],
                ]
            )
            p_values.append(stats.chi2_contingency(table)[1] if len(levels) > 1 else 1.0)
        else:
            p_values.append(stats.ks_2samp(ref, new).pvalue)
    adjusted = float(np.min(p_values)) * len(p_values)
    return adjusted <= ALPHA, adjusted


def _permuted(batch, rng: np.random.Generator):
    import pyarrow as pa

    return pa.table(
        {n: batch.column(n).take(rng.permutation(batch.num_rows)) for n in batch.column_names}
    )


def run_stream(stream: Stream, args: argparse.Namespace) -> dict[str, Any]:
    """Detection rates of both contenders on the stream's three kinds of batches."""
    rng = np.random.default_rng(7)
    n = args.rows
    peer_cols = stream.pool.num_columns

    def rates(batches: list) -> dict[str, Any]:
        ours = [aepipe_drifted(stream, b) for b in batches]
        theirs = [columns_drifted(stream, b) for b in batches]
        return {
            "native": (
                float(np.mean([d for d, _ in ours])),
                float(np.mean([d for d, _ in theirs])),
            ),
            "stats": ([v for _, v in ours], [v for _, v in theirs]),
        }

    def clean_batch():
        return stream.pool.take(rng.choice(stream.clean, n, replace=False))

    t0 = time.perf_counter()
    out: dict[str, Any] = {"clean": rates([clean_batch() for _ in range(args.clean)])}
    print(f"  {stream.name}: clean batches done, {time.perf_counter() - t0:.0f} s", flush=True)
    for size in SIZES:
        k = round(size * n)
        batches = []
        for _ in range(args.shifted):
            rows = np.concatenate(
                [
                    rng.choice(stream.clean, n - k, replace=False),
                    rng.choice(stream.shifted, k, replace=len(stream.shifted) < k),
                ]
            )
            batches.append(stream.pool.take(rng.permutation(rows)))
        out[f"shift {size:.0%}"] = rates(batches)
        done = time.perf_counter() - t0
        print(f"  {stream.name}: shift {size:.0%} done, {done:.0f} s", flush=True)
    out["joint only"] = rates([_permuted(clean_batch(), rng) for _ in range(args.joint)])
    print(
        f"  {stream.name}: {len(stream.reference['columns'])} reference columns, peer tests "
        f"{peer_cols} columns; {time.perf_counter() - t0:.0f} s",
        flush=True,
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=500, help="rows a batch")
    parser.add_argument("--clean", type=int, default=100, help="in-distribution batches")
    parser.add_argument("--shifted", type=int, default=40, help="batches a shift size")
    parser.add_argument("--joint", type=int, default=50, help="joint-only batches")
    parser.add_argument("--only", choices=["adult", "mnist"], help="one data set")
    args = parser.parse_args()
    print(machine())
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, build in (("adult", adult_stream), ("mnist", mnist_stream)):
            if args.only and args.only != name:
                continue
            home = Path(tmp) / name
            home.mkdir()
            t0 = time.perf_counter()
            stream = build(home)
            print(f"  {name}: model trained in {time.perf_counter() - t0:.0f} s", flush=True)
            results[name] = run_stream(stream, args)

    print(f"\ndetection rate, batches of {args.rows} rows (aepipe | per-column tests)")
    print("  at each contender's own level 0.01, and at a matched false-alarm rate of 1 %")
    print("  (each one's threshold set so 1 % of its clean batches alarm, then applied)")
    matched: dict[str, dict[str, tuple[float, float]]] = {}
    for name, out in results.items():
        cuts = [matched_cut(v) for v in out["clean"]["stats"]]
        matched[name] = {
            kind: tuple(  # type: ignore[misc]
                float(np.mean(np.asarray(v) <= cut))
                for v, cut in zip(r["stats"], cuts, strict=True)
            )
            for kind, r in out.items()
        }
        print(f"  {name}{'':11s} {'level 0.01':>17s}   {'matched 1 %':>17s}")
        for kind, r in out.items():
            (o, t), (mo, mt) = r["native"], matched[name][kind]
            print(f"    {kind:<12} {o:6.1%} | {t:6.1%}   {mo:6.1%} | {mt:6.1%}")
    print()
    for name, out in results.items():
        false_alarm = out["clean"]["native"][0]
        print(target(f"drift_false_alarm_{name}", false_alarm, 0.01, higher_is_better=False))
        shifted = [matched[name][f"shift {s:.0%}"] for s in SIZES]
        gap = min(ours - theirs for ours, theirs in shifted)
        print(
            target(
                f"drift_population_{name}_vs_columns_worst_gap_at_matched_1pct",
                gap,
                0.0,
                fmt="{:+.3f}",
            )
        )
        print(target(f"drift_joint_only_{name}", out["joint only"]["native"][0], 0.90))


def matched_cut(clean: list[float]) -> float:
    """The threshold on a contender's statistic (smaller: more drift) at which 1 % of its
    clean batches alarm: the k-th smallest, k = 1 % of them (none alarm under 100)."""
    k = int(0.01 * len(clean))
    return sorted(clean)[k - 1] if k else -np.inf


if __name__ == "__main__":
    main()
