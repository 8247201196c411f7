"""An isolation forest (Liu, Ting and Zhou, 2008) as plain arrays: fitted with NumPy, scored
with torch batch by batch, stored as JSON (no pickle).

Each tree is grown on a random subsample of ``sample_size`` rows (256) to a height limit of
``ceil(log2(sample_size))``: a node splits on a random column that varies within it, at a
uniform random threshold between that column's minimum and maximum there. Anomalies, few and
different, are isolated near the root. A row's score is ``2 ** (-E[h] / c(n))``: ``E[h]``
its mean path length over the trees (a leaf holding ``m`` rows adds ``c(m)``, the average
path length of an unsuccessful search in a binary search tree of ``m`` keys), ``c(n)`` the
same for the subsample size; near 1 for anomalies, well under 0.5 for usual rows.

The trees are stored in heap order (node ``i`` has children ``2i+1`` and ``2i+2``), so
scoring walks all trees at once, one level per step, with gathers instead of Python loops.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

EULER_GAMMA = 0.5772156649015329


def average_path(m: np.ndarray | float) -> np.ndarray:
    """``c(m)``: the average path length of an unsuccessful search among ``m`` keys (0 for
    ``m <= 1``, 1 for ``m == 2``)."""
    m = np.asarray(m, np.float64)
    safe = np.maximum(m, 2.0)
    c = 2.0 * (np.log(safe - 1.0) + EULER_GAMMA) - 2.0 * (safe - 1.0) / safe
    return np.where(m > 2, c, np.where(m == 2, 1.0, 0.0))


@dataclass(frozen=True)
class IsolationForest:
    """Fitted trees: per tree and heap slot, the split column (-1 for a leaf or an unused
    slot), the threshold, and for leaves the path length they add (depth plus ``c(rows)``)."""

    feature: np.ndarray  # int32, trees x slots
    threshold: np.ndarray  # float32, trees x slots
    leaf_value: np.ndarray  # float32, trees x slots
    sample_size: int

    @property
    def depth(self) -> int:
        """The height limit: levels a row descends at most."""
        return int(math.log2(self.feature.shape[1] + 1)) - 1

    @classmethod
    def fit(
        cls, x: np.ndarray, n_trees: int = 100, sample_size: int = 256, seed: int = 0
    ) -> IsolationForest:
        """Grow ``n_trees`` trees on subsamples of ``x`` (rows x columns)."""
        x = np.asarray(x, np.float32)
        if x.ndim != 2 or len(x) == 0:
            raise ValueError("an isolation forest needs a non-empty 2-D array")
        rng = np.random.default_rng(seed)
        psi = min(sample_size, len(x))
        depth = max(1, math.ceil(math.log2(max(psi, 2))))
        slots = 2 ** (depth + 1) - 1
        feature = np.full((n_trees, slots), -1, np.int32)
        threshold = np.zeros((n_trees, slots), np.float32)
        leaf_value = np.zeros((n_trees, slots), np.float32)
        for t in range(n_trees):
            rows = x[rng.choice(len(x), psi, replace=False)]
            stack = [(0, rows, 0)]
            while stack:
                slot, part, level = stack.pop()
                low, high = part.min(axis=0), part.max(axis=0)
                varying = np.flatnonzero(high > low)
                if level >= depth or len(part) <= 1 or len(varying) == 0:
                    leaf_value[t, slot] = level + float(average_path(len(part)))
                    continue
                q = int(rng.choice(varying))
                p = np.float32(rng.uniform(low[q], high[q]))
                if not low[q] <= p < high[q]:  # float32 rounding onto the maximum
                    p = low[q]
                feature[t, slot], threshold[t, slot] = q, p
                go_left = part[:, q] <= p
                stack.append((2 * slot + 1, part[go_left], level + 1))
                stack.append((2 * slot + 2, part[~go_left], level + 1))
        return cls(feature, threshold, leaf_value, psi)

    def path_lengths(self, x: Tensor) -> Tensor:
        """Each row's mean path length over the trees (rows, fp32)."""
        x = x.float().flatten(1)
        n_trees, slots = self.feature.shape
        feature = torch.as_tensor(self.feature, device=x.device).long().reshape(-1)
        threshold = torch.as_tensor(self.threshold, device=x.device).reshape(-1)
        leaf = torch.as_tensor(self.leaf_value, device=x.device).reshape(-1)
        # each tree's root in the flattened trees; a node's children lie at 2 * its heap
        # index + 1 and + 2, i.e. at 2 * flat - root + 1 (+ 1) in the flattened arrays
        root = (torch.arange(n_trees, device=x.device) * slots).unsqueeze(0)  # 1 x trees
        flat = root.expand(len(x), n_trees).contiguous()
        for _ in range(self.depth):
            f = feature.take(flat)  # rows x trees
            inner = f >= 0
            values = torch.gather(x, 1, f.clamp_min(0))
            right = (values > threshold.take(flat)).long()
            flat = torch.where(inner, 2 * flat - root + 1 + right, flat)
        return leaf.take(flat).mean(dim=1)

    def score(self, x: Tensor) -> Tensor:
        """The isolation score ``2 ** (-E[h] / c(sample_size))`` of each row, in (0, 1]."""
        c = float(average_path(self.sample_size)) or 1.0
        return torch.exp2(-self.path_lengths(x) / c)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form: the used slots of each tree only (sparse), thresholds as float32
        values written in full."""
        trees = []
        for f, thr, leaf in zip(self.feature, self.threshold, self.leaf_value, strict=True):
            used = np.flatnonzero((f >= 0) | (leaf != 0))
            trees.append(
                {
                    "slot": used.tolist(),
                    "feature": f[used].tolist(),
                    "threshold": [float(v) for v in thr[used]],
                    "leaf": [float(v) for v in leaf[used]],
                }
            )
        return {"sample_size": self.sample_size, "slots": self.feature.shape[1], "trees": trees}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> IsolationForest:
        """Rebuild from :meth:`to_dict`'s form."""
        n_trees, slots = len(data["trees"]), int(data["slots"])
        feature = np.full((n_trees, slots), -1, np.int32)
        threshold = np.zeros((n_trees, slots), np.float32)
        leaf_value = np.zeros((n_trees, slots), np.float32)
        for t, tree in enumerate(data["trees"]):
            slot = np.asarray(tree["slot"], np.int64)
            feature[t, slot] = tree["feature"]
            threshold[t, slot] = tree["threshold"]
            leaf_value[t, slot] = tree["leaf"]
        return cls(feature, threshold, leaf_value, int(data["sample_size"]))
