"""Fitting from streaming statistics: exact where the summary is exact, and a median sketch
whose rank error stays within the bound it reports."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from ae_models.preprocessing.column_stats import FitStats, Moments, QuantileSketch, signed_log1p
from ae_models.preprocessing.normalizer import Normalizer


@pytest.mark.parametrize("distinct", [1, 7, 1000, 30_000])
def test_the_sketch_is_exact_up_to_its_cap(distinct) -> None:
    rng = np.random.default_rng(distinct)
    values = rng.integers(0, distinct, 50_000).astype(np.float64) * 0.37 - 3
    sketch = QuantileSketch()
    for part in np.array_split(values, 9):
        sketch.add(part)
    assert sketch.exact and sketch.rank_error == 0
    qs = [0.0, 0.25, 0.5, 0.75, 1.0]
    assert sketch.quantiles(qs) == np.percentile(values, [100 * q for q in qs]).tolist()
    # quantiles of the transformed values, from the same sketch
    logged = np.percentile(signed_log1p(values), [25, 50, 75]).tolist()
    assert sketch.quantiles([0.25, 0.5, 0.75], signed_log1p) == logged


def _rank_miss(values: np.ndarray, q: float, estimate: float) -> float:
    """How far (in rows) ``estimate`` lies from the rank the ``q`` quantile has."""
    ordered = np.sort(values)
    below = np.searchsorted(ordered, estimate, side="left")
    at_or_below = np.searchsorted(ordered, estimate, side="right")
    want = q * (len(values) - 1)
    return 0.0 if below <= want <= at_or_below else min(abs(below - want), abs(at_or_below - want))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_beyond_its_cap_the_sketch_stays_within_its_rank_error(seed) -> None:
    """Small buffers force many merges; every quantile is within the reported rank error,
    and that error within the documented bound levels * n / (2 k)."""
    rng = np.random.default_rng(seed)
    values = np.concatenate([rng.lognormal(size=150_000), rng.normal(5, 1, 50_000)])
    rng.shuffle(values)
    sketch = QuantileSketch(exact_cap=500, k=256)
    for part in np.array_split(values, 37):
        sketch.add(part)
    assert not sketch.exact and sketch.n == values.size
    levels = int(np.ceil(np.log2(values.size / sketch.k)))
    assert 0 < sketch.rank_error <= levels * values.size / (2 * sketch.k)
    for q in (0.01, 0.25, 0.5, 0.75, 0.99):
        estimate = sketch.quantiles([q])[0]
        assert _rank_miss(values, q, estimate) <= sketch.rank_error


def test_the_default_sketch_on_a_million_distinct_values() -> None:
    """The bound the docs give: a median within 0.02 % of the rows of the exact rank."""
    values = np.random.default_rng(3).permutation(1_000_000).astype(np.float64)
    sketch = QuantileSketch()
    for part in np.array_split(values, 16):
        sketch.add(part)
    assert sketch.rank_error / values.size < 2e-4
    assert _rank_miss(values, 0.5, sketch.quantiles([0.5])[0]) <= sketch.rank_error


def test_moments_merge_batches_without_overflow() -> None:
    rng = np.random.default_rng(4)
    values = np.concatenate([rng.normal(1e6, 3, 1000), [0.0] * 10, rng.normal(0, 1e300, 1000)])
    m = Moments()
    for part in np.array_split(values, 11):
        m.add(part)
    top = np.abs(values).max()
    mean, std = m.mean_std()
    assert np.isfinite(std)
    np.testing.assert_allclose(
        [mean, std], [top * (values / top).mean(), top * (values / top).std()]
    )
    small = Moments()
    for part in np.array_split(rng.normal(1e6, 3, 10_000), 5):  # a large mean, a small spread
        small.add(part)
    assert abs(small.mean_std()[1] - 3) < 0.1


def test_a_fit_from_batches_is_the_fit_of_the_whole_frame() -> None:
    """What normalize does (Arrow batches of training rows) and what the estimator does (one
    frame) give the same normalizer."""
    rng = np.random.default_rng(5)
    n = 20_000
    frame = pd.DataFrame(
        {
            "x": np.where(rng.random(n) < 0.05, np.nan, rng.exponential(3, n)),
            "k": rng.integers(0, 40, n).astype(np.float64),
            "city": rng.choice(["Oslo", "Bergen", "Tromsø", None], n, p=[0.5, 0.3, 0.1, 0.1]),
            "flag": rng.random(n) < 0.3,
        }
    )
    for scaling in ("minmax", "standard", "robust"):
        whole = Normalizer.fit(frame, max_levels=2, scaling=scaling, log1p=["x"]).to_dict()
        table = pa.Table.from_pandas(frame, preserve_index=False)
        stats = FitStats(FitStats.kinds_of_arrow(table.schema, list(frame.columns)), ("x",))
        for batch in table.to_batches(max_chunksize=3_000):
            stats.add_arrow(batch)
        streamed = Normalizer.from_stats(stats, max_levels=2, scaling=scaling).to_dict()
        for a, b in zip(whole["columns"], streamed["columns"], strict=True):
            assert a.keys() == b.keys()
            for key in a:
                if isinstance(a[key], float):
                    assert a[key] == pytest.approx(b[key], rel=1e-12), (scaling, a["source"], key)
                else:
                    assert a[key] == b[key], (scaling, a["source"], key)
    assert whole["columns"][2]["levels"] == ["Oslo", "Bergen"]  # the most frequent two
