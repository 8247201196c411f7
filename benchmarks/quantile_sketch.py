"""The normalizer's quantile sketch against Apache DataSketches' KLL sketch (issue 43.6).

Fitting a normalizer needs each numeric column's median (the fill) and quartiles (robust
scaling) from a stream of batches. aepipe's
:class:`ae_models.preprocessing.column_stats.QuantileSketch` is
exact up to 32,768 distinct values and a Munro-Paterson sketch beyond; the well-kept
alternative is DataSketches' KLL sketch (``datasketches.kll_doubles_sketch``), mergeable with
published bounds. Both at k = 16,384 on a permutation of ``n`` distinct values, fed in
65,536-value batches as the normalizer feeds them, repeated ``--runs`` times:

- seconds to take the stream (best of the runs);
- the worst rank miss (rows) of the quartiles and the median, against the bound each reports
  (aepipe's is deterministic; KLL's holds with 99 % confidence);
- values retained;
- whether the runs give the same quantiles: a normalizer fitted twice on the same rows should
  be the same normalizer, so a pipeline run can be repeated exactly.

    .venv/bin/python benchmarks/quantile_sketch.py          # about a minute on 2 CPU cores

Needs the ``bench`` extra (``pip install -c constraints.txt -e ".[bench]"``) for datasketches.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ae_models.preprocessing.column_stats import QuantileSketch
from benchmarks.common import machine, target

QS = (0.25, 0.5, 0.75)
K = 1 << 14
BATCH = 1 << 16


def rank_miss(n: int, q: float, estimate: float) -> float:
    """Rows between ``estimate`` and the ``q`` quantile's rank in a permutation of 0..n-1."""
    return abs(estimate - q * (n - 1))


def aepipe_sketch(values: np.ndarray) -> tuple[float, list[float], float, int]:
    """Seconds, quantiles, reported rank bound (rows) and values retained of aepipe's sketch."""
    start = time.perf_counter()
    sketch = QuantileSketch(k=K)
    for part in np.array_split(values, max(1, values.size // BATCH)):
        sketch.add(part)
    seconds = time.perf_counter() - start
    return seconds, sketch.quantiles(list(QS)), float(sketch.rank_error), sketch.held


def kll_sketch(values: np.ndarray) -> tuple[float, list[float], float, int]:
    """The same figures of DataSketches' KLL sketch at the same k."""
    from datasketches import kll_doubles_sketch

    start = time.perf_counter()
    sketch = kll_doubles_sketch(K)
    for part in np.array_split(values, max(1, values.size // BATCH)):
        sketch.update(part)
    seconds = time.perf_counter() - start
    quantiles = [sketch.get_quantile(q) for q in QS]
    return (
        seconds,
        quantiles,
        sketch.normalized_rank_error(False) * values.size,
        sketch.num_retained,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    print(machine())
    lines = []
    for n in args.rows:
        values = np.random.default_rng(3).permutation(n).astype(np.float64)
        for name, fn in (("aepipe", aepipe_sketch), ("kll", kll_sketch)):
            runs = [fn(values) for _ in range(args.runs)]
            seconds = min(r[0] for r in runs)
            miss = max(rank_miss(n, q, e) for r in runs for q, e in zip(QS, r[1], strict=True))
            same = all(r[1] == runs[0][1] for r in runs)
            print(
                f"{name:>6} n={n:,}: {seconds:.3f} s; worst rank miss {miss:.0f} rows "
                f"(bound {runs[0][2]:.0f}); {runs[0][3]:,} values held; "
                f"quantiles {'the same' if same else 'DIFFERENT'} over {args.runs} runs: "
                + "; ".join(str(r[1]) for r in runs)
            )
            if name == "aepipe":
                lines.append(target(f"aepipe_sketch_reproducible_{n}", float(same), 1.0))
                lines.append(
                    target(
                        f"aepipe_sketch_within_bound_{n}",
                        miss / max(runs[0][2], 1),
                        1.0,
                        higher_is_better=False,
                    )
                )
    for line in lines:
        print(line)


if __name__ == "__main__":
    main()
