"""Drift of scored rows from a model's reference: the statistics, no I/O.

At training time :func:`build_reference` summarizes held-out rows the model never trained on:
their calibrated anomaly scores (quantiles), the share flagged, per source column a compact
distribution (decile and percentile bins of a numeric column's model input, level
frequencies of a categorical or boolean one) and the codes' mean and covariance. It is stored in the
model's ``model.json`` under ``"drift"``.

:func:`check_drift` tests a batch of scored rows against it, each test with a p-value:

- score drift: Kolmogorov-Smirnov distance of the batch's calibrated scores from the
  reference scores (two-sample, the reference's own size counted);
- flagged rate: a binomial test of the rows flagged against the reference's rate;
- feature drift: a chi-square test per source column on the reference bins, with the
  population stability index (PSI) as the size of the shift;
- code drift: the batch's mean code against the reference's, a Hotelling-style chi-square.

One decision, ``drifted``, rejects at level ``alpha`` after Holm's correction over all the
tests, so the false-alarm rate of a batch is at most ``alpha``. Batches of fewer than
``MIN_ROWS`` rows are not tested (the chi-square tests need about 5 expected rows a bin).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

BINS = 10  # decile bins of each numeric column (its PSI)
CDF_BINS = 100  # percentile bins of each numeric column (its KS test)
SCORE_QUANTILES = 201
MIN_ROWS = 200
ALPHA = 0.01
_EPS = 1e-4  # PSI: empty bins
NO_REFERENCE = "the model was saved without a drift reference"


def _quantile_edges(values: np.ndarray, bins: int) -> list[float]:
    """Inner edges of ``bins`` about-equal-count bins of ``values`` (ties merged)."""
    edges = np.unique(np.quantile(values, np.linspace(0, 1, bins + 1)[1:-1]))
    return [float(e) for e in edges]


def _binned(values: np.ndarray, edges: list[float]) -> np.ndarray:
    """Counts of ``values`` in the bins the inner ``edges`` make (len(edges) + 1 bins)."""
    return np.bincount(np.searchsorted(edges, values, side="right"), minlength=len(edges) + 1)


def _levels(block: np.ndarray) -> np.ndarray:
    """A categorical column's one-hot inputs, or a boolean's one input as two levels."""
    return block if block.shape[1] > 1 else np.column_stack([1 - block[:, 0], block])


def build_reference(
    calibrated_scores: np.ndarray,
    flagged: np.ndarray,
    inputs: np.ndarray,
    columns: list[dict[str, Any]],
    codes: np.ndarray,
) -> dict[str, Any]:
    """The drift reference of held-out rows (JSON-ready).

    The scores (calibrated) and flags come from rows the model did not train on (in-sample
    scores are lower than new rows'); ``inputs`` (the model input matrix) and ``codes`` may
    come from more rows, the training rows say, since a larger sample makes a steadier
    reference. ``columns`` says, per source column, its ``name``, ``kind`` (``numeric``,
    ``scaled``, ``categorical`` or ``boolean``) and the ``index`` of its inputs in ``inputs``
    (a numeric column's value first)."""
    rows = len(inputs)
    refs = []
    for col in columns:
        block = inputs[:, col["index"]]
        if col["kind"] in ("categorical", "boolean"):
            levels = _levels(block)
            counts = levels.sum(axis=0) + 0.5  # a level the held-out rows lack is rare, not 0
            expected = [float(v) for v in counts / counts.sum()]
            refs.append(
                {"name": col["name"], "kind": "levels", "index": col["index"], "expected": expected}
            )
        else:
            edges = _quantile_edges(block[:, 0], BINS)
            expected = [float(v) for v in _binned(block[:, 0], edges) / rows]
            fine = _quantile_edges(block[:, 0], CDF_BINS)
            cdf = [float(v) for v in _binned(block[:, 0], fine) / rows]
            refs.append(
                {"name": col["name"], "kind": "bins", "index": col["index"][:1], "edges": edges}
                | {"expected": expected, "cdf_edges": fine, "cdf_expected": cdf}
            )
    codes = np.asarray(codes, np.float64)
    return {
        "rows": int(rows),
        "score_rows": len(calibrated_scores),
        "score_quantiles": [
            float(v) for v in np.quantile(calibrated_scores, np.linspace(0, 1, SCORE_QUANTILES))
        ],
        "flagged_rate": float(np.mean(flagged)),
        "columns": refs,
        "code_mean": [float(v) for v in codes.mean(axis=0)],
        "code_cov": np.cov(codes, rowvar=False).reshape(codes.shape[1], -1).tolist(),
    }


@dataclass(frozen=True)
class DriftCheck:
    """One batch's drift check: the tests' p-values, the evidence and the decision."""

    rows: int
    checked: bool  # False: too few rows, or no reference (``reason`` says which)
    reason: str = ""
    drifted: bool = False
    score_p_value: float | None = None
    score_ks: float | None = None
    flagged_rate: float | None = None
    expected_rate: float | None = None
    rate_p_value: float | None = None
    code_p_value: float | None = None
    column_p_values: dict[str, float] = field(default_factory=dict)
    psi: dict[str, float] = field(default_factory=dict)
    drifted_columns: list[str] = field(default_factory=list)  # largest PSI first
    # share of the batch's and of the reference's calibrated scores in HISTOGRAM_BINS equal
    # bins of [0, 1] (the picture beside each check)
    score_histogram: list[float] = field(default_factory=list)
    reference_histogram: list[float] = field(default_factory=list)

    def to_text(self) -> str:
        """The run summary's line."""
        if not self.checked:
            return f"drift: not checked ({self.reason})"
        if not self.drifted:
            return (
                f"drift: none found in {self.rows} rows (score p={self.score_p_value:.3g}, "
                f"flagged {self.flagged_rate:.2%} vs {self.expected_rate:.2%})"
            )
        top = ", ".join(f"{c} (PSI {self.psi[c]:.2f})" for c in self.drifted_columns[:3])
        return (
            f"drift: DETECTED in {self.rows} rows (score p={self.score_p_value:.3g}, flagged "
            f"{self.flagged_rate:.2%} vs {self.expected_rate:.2%}, codes p="
            f"{self.code_p_value:.3g}){'; columns: ' + top if top else ''}"
        )


MIN_EXPECTED = 5.0  # rows a chi-square cell must expect (Cochran's rule)


def _pooled(observed: np.ndarray, expected: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The cells of a chi-square test with the sparse ones pooled: the cells expecting fewer
    than MIN_EXPECTED rows (a rare level, a bin no training value fell in) become one cell,
    with the next-smallest cells added while it still expects fewer. Without pooling, one
    row of a level the reference saw 0.01 % of the time would be a false alarm."""
    order = np.argsort(expected, kind="stable")
    exp, obs = expected[order], observed[order]
    k = int(np.searchsorted(exp, MIN_EXPECTED))  # cells below the minimum
    if k == 0:
        return obs, exp
    while k < len(exp) and exp[:k].sum() < MIN_EXPECTED:
        k += 1
    return np.append(obs[k:], obs[:k].sum()), np.append(exp[k:], exp[:k].sum())


def _holm(p_values: dict[str, float], alpha: float) -> set[str]:
    """The tests Holm's step-down procedure rejects at family-wise level ``alpha``."""
    ordered = sorted(p_values.items(), key=lambda kv: kv[1])
    rejected = set()
    for i, (name, p) in enumerate(ordered):
        if p > alpha / (len(ordered) - i):
            break
        rejected.add(name)
    return rejected


@dataclass
class DriftCounts:
    """What the tests need of scored rows, as counts that add up: partitions count their
    rows apart and the commit merges them (:meth:`merge`) before :func:`drift_decision`."""

    rows: int
    score_hist: np.ndarray  # calibrated scores in SCORE_BINS equal bins of [0, 1]
    flagged: int
    code_sum: np.ndarray
    columns: list[np.ndarray]  # per reference column, rows per bin or level
    # per reference column, rows per percentile bin (None: a level column, or a reference
    # saved before percentile bins)
    fine: list[np.ndarray | None] = field(default_factory=list)

    def merge(self, other: DriftCounts) -> DriftCounts:
        """The counts of both batches together."""
        return DriftCounts(
            self.rows + other.rows,
            self.score_hist + other.score_hist,
            self.flagged + other.flagged,
            self.code_sum + other.code_sum,
            [a + b for a, b in zip(self.columns, other.columns, strict=True)],
            [
                None if a is None or b is None else a + b
                for a, b in zip(self.fine, other.fine, strict=True)
            ],
        )


SCORE_BINS = 1000  # the KS distance from counts is exact to 1 / SCORE_BINS
HISTOGRAM_BINS = 20  # the coarser bins of a check's score histogram


def count_batch(
    reference: dict[str, Any],
    calibrated_scores: np.ndarray,
    flagged: np.ndarray,
    inputs: np.ndarray,
    codes: np.ndarray,
) -> DriftCounts:
    """The counts of one batch of scored rows against ``reference``'s bins and levels."""
    scores = np.clip(np.asarray(calibrated_scores, np.float64), 0.0, 1.0)
    hist = np.bincount(
        np.minimum((scores * SCORE_BINS).astype(np.int64), SCORE_BINS - 1), minlength=SCORE_BINS
    )
    columns, fine = [], []
    for col in reference["columns"]:
        block = inputs[:, col["index"]]
        if col["kind"] == "levels":
            levels = _levels(block)
            columns.append(levels.sum(axis=0).astype(np.float64))
            fine.append(None)
        else:
            columns.append(_binned(block[:, 0], col["edges"]).astype(np.float64))
            cdf = col.get("cdf_edges")
            fine.append(None if cdf is None else _binned(block[:, 0], cdf).astype(np.float64))
    return DriftCounts(
        len(scores),
        hist,
        int(np.sum(flagged)),
        np.asarray(codes, np.float64).sum(axis=0),
        columns,
        fine,
    )


def drift_decision(
    reference: dict[str, Any] | None,
    counts: DriftCounts | None,
    *,
    alpha: float = ALPHA,
    min_rows: int = MIN_ROWS,
) -> DriftCheck:
    """Test merged counts against ``reference``: the decision and its evidence."""
    from scipy import stats

    n = counts.rows if counts is not None else 0
    if reference is None:
        return DriftCheck(n, False, NO_REFERENCE)
    if counts is None or n < min_rows:
        return DriftCheck(n, False, f"{n} rows, fewer than the {min_rows} a check needs")

    def effective(n_ref: int) -> int:  # two-sample: the reference is a sample too
        return max(1, round(n * n_ref / (n + n_ref)))

    n_ref, n_eff = int(reference["score_rows"]), effective(int(reference["score_rows"]))
    q = np.asarray(reference["score_quantiles"], np.float64)
    edges = np.arange(1, SCORE_BINS + 1) / SCORE_BINS
    ref_cdf = np.interp(edges, q, np.linspace(0, 1, len(q)), left=0.0, right=1.0)
    ecdf = np.cumsum(counts.score_hist) / n
    ks = float(np.max(np.abs(ecdf - ref_cdf)))
    step = SCORE_BINS // HISTOGRAM_BINS
    coarse = np.diff(ref_cdf[step - 1 :: step], prepend=0.0)
    p_values = {"score": float(stats.kstwo.sf(ks, n_eff))}

    expected_rate = float(reference["flagged_rate"])
    rate = min(max(expected_rate, 0.5 / n_ref), 1 - 0.5 / n_ref)
    p_values["flagged"] = float(stats.binomtest(counts.flagged, n, rate).pvalue)

    n_eff = effective(int(reference["rows"]))  # codes and columns: their own reference
    mean = np.asarray(reference["code_mean"], np.float64)
    cov = np.atleast_2d(np.asarray(reference["code_cov"], np.float64))
    diff = counts.code_sum / n - mean
    cov = cov + np.eye(len(mean)) * 1e-9 * max(float(np.trace(cov)), 1e-12)
    t2 = float(n_eff * diff @ np.linalg.pinv(cov) @ diff)
    p_values["codes"] = float(stats.chi2.sf(t2, len(mean)))

    psi: dict[str, float] = {}
    column_p: dict[str, float] = {}
    fine = counts.fine or [None] * len(counts.columns)
    for col, observed, percentiles in zip(reference["columns"], counts.columns, fine, strict=True):
        expected = np.asarray(col["expected"], np.float64)
        if percentiles is not None:  # a numeric column: KS on its percentile bins
            cdf = np.cumsum(np.asarray(col["cdf_expected"], np.float64))
            gap = np.abs(np.cumsum(percentiles) / n - cdf)[:-1]
            column_p[col["name"]] = float(stats.kstwo.sf(gap.max(), n_eff)) if len(gap) else 1.0
        else:  # levels (or a reference without percentiles): chi-square, sparse cells pooled
            obs, exp = _pooled(observed, expected * n)
            stat = float(np.sum((obs - exp) ** 2 / exp))
            dof = len(exp) - 1  # 0: every cell pooled into one, nothing to test
            column_p[col["name"]] = float(stats.chi2.sf(stat * n_eff / n, dof)) if dof else 1.0
        o, e = np.maximum(observed / n, _EPS), np.maximum(expected, _EPS)
        psi[col["name"]] = float(np.sum((o - e) * np.log(o / e)))
    rejected = _holm({**p_values, **{f"column:{c}": p for c, p in column_p.items()}}, alpha)
    drifted_columns = sorted(
        (c for c in column_p if f"column:{c}" in rejected), key=lambda c: -psi[c]
    )
    return DriftCheck(
        rows=n,
        checked=True,
        drifted=bool(rejected),
        score_p_value=p_values["score"],
        score_ks=ks,
        flagged_rate=counts.flagged / n,
        expected_rate=expected_rate,
        rate_p_value=p_values["flagged"],
        code_p_value=p_values["codes"],
        column_p_values=column_p,
        psi=psi,
        drifted_columns=drifted_columns,
        score_histogram=[
            float(v) for v in counts.score_hist.reshape(HISTOGRAM_BINS, -1).sum(axis=1) / n
        ],
        reference_histogram=[float(v) for v in coarse],
    )


def check_drift(
    reference: dict[str, Any] | None,
    calibrated_scores: np.ndarray,
    flagged: np.ndarray,
    inputs: np.ndarray,
    codes: np.ndarray,
    *,
    alpha: float = ALPHA,
    min_rows: int = MIN_ROWS,
) -> DriftCheck:
    """Test one batch of scored rows against ``reference`` (:func:`build_reference`)."""
    if reference is None:
        return DriftCheck(len(calibrated_scores), False, NO_REFERENCE)
    counts = count_batch(reference, calibrated_scores, flagged, inputs, codes)
    return drift_decision(reference, counts, alpha=alpha, min_rows=min_rows)
