"""Drift statistics: calibrated on batches like the reference, and sensitive to a shifted
column, to a shift only the joint distribution shows, and silent on batches too small."""

from __future__ import annotations

import numpy as np
import pytest

from ae_models.scoring.drift import MIN_ROWS, build_reference, check_drift

COLUMNS = [
    {"name": "amount", "kind": "numeric", "index": [0]},
    {"name": "visits", "kind": "numeric", "index": [1]},
    {"name": "tier", "kind": "categorical", "index": [2, 3, 4]},
    {"name": "member", "kind": "boolean", "index": [5]},
]


def rows(n: int, rng: np.random.Generator, shift: float = 0.0, joint: bool = False):
    """Model inputs, codes, calibrated scores and flags of ``n`` rows: amount and visits
    move together (the model learned that), tier follows amount."""
    amount = rng.normal(0.5 + shift, 0.1, n)
    visits = amount + rng.normal(0, 0.02, n)
    if joint:  # each column keeps its marginal; the pairing breaks
        visits = rng.permutation(visits)
    tier = np.digitize(amount, [0.45, 0.55])
    onehot = np.eye(3)[tier]
    member = (rng.random(n) < 0.3).astype(float)
    inputs = np.column_stack([amount, visits, onehot, member])
    codes = np.column_stack([amount + visits, rng.normal(0, 1, n)])
    error = np.abs(visits - amount) / 0.02 + rng.random(n)  # large when the pairing breaks
    calibrated = np.clip(np.interp(error, [0, 3], [0, 1]), 0, 1)
    return inputs, codes, calibrated, calibrated > 0.99


@pytest.fixture(scope="module")
def reference():
    rng = np.random.default_rng(0)
    inputs, codes, _, _ = rows(20000, rng)  # "training rows": the columns
    held_out = rows(3000, rng)  # scores of rows the model did not train on
    return build_reference(held_out[2], held_out[3], inputs, COLUMNS, codes)


def check(reference, n, seed, **shift):
    inputs, codes, calibrated, flagged = rows(n, np.random.default_rng(seed), **shift)
    return check_drift(reference, calibrated, flagged, inputs, codes)


def test_batches_like_the_reference_rarely_alarm(reference) -> None:
    alarms = [check(reference, 500, seed).drifted for seed in range(1, 201)]
    assert sum(alarms) <= 6  # alpha 0.01 per batch: about 2 of 200 expected


def test_a_shifted_column_is_found_and_named(reference) -> None:
    found = check(reference, 500, 7, shift=0.05)
    assert found.checked and found.drifted
    assert found.drifted_columns[0] in ("amount", "visits", "tier")
    assert found.psi["amount"] > 0.1 > found.psi["member"]
    assert "DETECTED in 500 rows" in found.to_text()


def test_a_joint_only_shift_is_found_by_the_scores(reference) -> None:
    found = check(reference, 500, 8, joint=True)
    assert found.drifted and found.score_p_value < 1e-6
    assert not found.drifted_columns  # every column's own distribution is unchanged


def test_too_few_rows_or_no_reference_is_not_checked(reference) -> None:
    small = check(reference, MIN_ROWS - 1, 9, shift=1.0)
    assert not small.checked and not small.drifted
    assert (
        small.to_text()
        == f"drift: not checked ({MIN_ROWS - 1} rows, fewer than the 200 a check needs)"
    )
    inputs, codes, calibrated, flagged = rows(500, np.random.default_rng(3))
    none = check_drift(None, calibrated, flagged, inputs, codes)
    assert not none.checked and "without a drift reference" in none.reason


def test_partitions_count_apart_and_merge_to_the_whole(reference) -> None:
    from ae_models.scoring.drift import count_batch, drift_decision

    inputs, codes, calibrated, flagged = rows(1000, np.random.default_rng(11), shift=0.03)
    halves = [
        count_batch(reference, calibrated[s], flagged[s], inputs[s], codes[s])
        for s in (slice(0, 400), slice(400, None))
    ]
    merged = drift_decision(reference, halves[0].merge(halves[1]))
    whole = check_drift(reference, calibrated, flagged, inputs, codes)
    assert merged == whole and merged.rows == 1000


def test_a_level_the_reference_never_saw_alarms_only_when_it_is_common() -> None:
    """One row of a level absent from the reference rows is no evidence of drift (its
    expected count is near 0, so a raw chi-square cell would explode): sparse cells are
    pooled. A new level in a tenth of the rows is drift."""
    rng = np.random.default_rng(5)
    columns = [{"name": "plan", "kind": "categorical", "index": [0, 1, 2]}]

    def plans(n: int, new: int) -> np.ndarray:
        level = rng.choice(2, n, p=[0.7, 0.3])
        level[:new] = 2  # the level the reference never saw
        return np.eye(3)[rng.permutation(level)]

    def codes(n: int) -> np.ndarray:
        return rng.normal(0, 1, (n, 2))

    ref = build_reference(
        rng.random(3000), np.zeros(3000, bool), plans(20000, 0), columns, codes(20000)
    )
    one = plans(500, 1)
    assert not check_drift(ref, rng.random(500), np.zeros(500, bool), one, codes(500)).drifted
    common = plans(500, 50)
    found = check_drift(ref, rng.random(500), np.zeros(500, bool), common, codes(500))
    assert found.drifted and found.drifted_columns == ["plan"]


def test_a_reference_without_percentile_bins_still_checks(reference) -> None:
    """Models saved before percentile bins (KS per numeric column) test their decile bins
    with a chi-square instead."""
    legacy = {
        **reference,
        "columns": [
            {k: v for k, v in col.items() if not k.startswith("cdf_")}
            for col in reference["columns"]
        ],
    }
    assert check(legacy, 500, 7, shift=0.05).drifted
    assert not check(legacy, 500, 1).drifted
