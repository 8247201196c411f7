"""Per-source-column explanations: one-hot groups summed back to their source column."""

from __future__ import annotations

import numpy as np

from tasks.explain import top_columns


def test_top_columns_sum_one_hot_groups_and_rank_largest_first() -> None:
    # inputs: amount, region=north, region=south, region=other, items
    groups = np.array([[1, 0, 0], [0, 1, 0], [0, 1, 0], [0, 1, 0], [0, 0, 1]], dtype=np.float32)
    names = ["amount", "region", "items"]
    errors = np.array(
        [
            [0.5, 0.2, 0.2, 0.2, 0.1],  # region's three levels together (0.6) beat amount
            [0.0, 0.0, 0.1, 0.0, 0.9],
        ],
        dtype=np.float32,
    )
    top = top_columns(errors, groups, names, 2).to_pylist()
    assert top == [["region", "amount"], ["items", "region"]]
    assert top_columns(errors, groups, names, 5).to_pylist()[0] == ["region", "amount", "items"]


def test_top_columns_rank_by_how_unusual_a_columns_error_is() -> None:
    """With the training rows' mean errors, a wide one-hot column whose summed error is only
    its usual size no longer outranks a narrow column at ten times its usual error."""
    groups = np.array([[1, 0], [0, 1], [0, 1], [0, 1], [0, 1]], dtype=np.float32)
    names = ["capital_gain", "occupation"]
    typical = np.array([0.01, 0.05, 0.05, 0.05, 0.05], dtype=np.float32)  # occupation: 0.2
    errors = np.array([[0.1, 0.05, 0.05, 0.05, 0.05]], dtype=np.float32)
    assert top_columns(errors, groups, names, 1).to_pylist() == [["occupation"]]  # by size
    assert top_columns(errors, groups, names, 1, typical).to_pylist() == [["capital_gain"]]
