"""The three detectors the ``ensemble`` anomaly score adds to a model's reconstruction error:
the distance of a row's code to its nearest training codes, how easily an isolation forest
isolates the row's inputs, and how far in the tails of the training columns its inputs lie.

The tails are ECOD's (Li et al., "ECOD: unsupervised outlier detection using empirical
cumulative distribution functions", TKDE 2022): per input column the empirical left and
right tail probabilities of the value, ``-log`` of the smaller tail summed over the columns.
The empirical distribution of each column is kept as :data:`TAIL_QUANTILES` quantiles of the
training rows (exact for fewer rows); a value counts as if it were one more training row, so
a value beyond every training value has tail probability ``1 / (quantiles + 1)``, not 0.

Stored beside the model's ``model.json``, without pickle: the training codes and the column
quantiles as ``.npy`` (loaded with ``allow_pickle=False``), the isolation forest as JSON.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ae_models.scoring.isolation import IsolationForest

NEIGHBORS = 10  # the score is the mean distance to this many nearest training codes
BANK_ROWS = 4096  # training codes kept for the neighbours, at most (a uniform sample)
TAIL_QUANTILES = 256  # quantiles kept per input column for the tail probabilities
CODES_FILE = "score-codes.npy"
FOREST_FILE = "score-isolation.json"
TAILS_FILE = "score-tails.npy"


@dataclass(frozen=True)
class Detectors:
    """A bounded sample of training codes (for the neighbour distance), an isolation forest
    on the training inputs, and the input columns' quantiles (for the tail probabilities)."""

    bank: np.ndarray  # float32, rows x code size
    forest: IsolationForest
    quantiles: np.ndarray  # float32, input columns x quantiles, each row ascending
    k: int = NEIGHBORS

    @classmethod
    def fit(cls, codes: np.ndarray, x: np.ndarray, seed: int = 0) -> Detectors:
        """Keep a uniform sample of at most :data:`BANK_ROWS` of the distinct training
        ``codes`` (each once: many copies of a row in the bank are no evidence that the row
        is normal, and would put a repeated anomaly at distance 0 from its own copies), grow
        the isolation forest on the training inputs ``x`` and keep their columns'
        quantiles."""
        if len(codes) < 2:
            raise ValueError("the ensemble score needs at least 2 training rows")
        rng = np.random.default_rng(seed)
        codes = np.unique(np.asarray(codes, np.float32), axis=0)
        if len(codes) < 2:  # every row the same code: the distance to it is what there is
            codes = np.repeat(codes, 2, axis=0)
        pick = np.sort(rng.choice(len(codes), min(BANK_ROWS, len(codes)), replace=False))
        flat = np.asarray(x, np.float32).reshape(len(x), -1)
        forest = IsolationForest.fit(flat, seed=int(rng.integers(2**31)))
        levels = np.linspace(0.0, 1.0, min(TAIL_QUANTILES, len(flat)))
        quantiles = np.quantile(flat, levels, axis=0).T.astype(np.float32)
        return cls(
            np.ascontiguousarray(codes[pick]),
            forest,
            np.ascontiguousarray(quantiles),
            min(NEIGHBORS, len(pick) - 1),
        )

    def neighbor_distance(self, codes: Tensor) -> Tensor:
        """Each code's mean Euclidean distance to its ``k`` nearest codes in the bank. A bank
        code at distance (numerically) zero counts as the row itself and is passed over once,
        so a training row scores as any other row would: scoring the training rows again
        gives their training scores."""
        bank = torch.as_tensor(self.bank, device=codes.device)
        q = codes.float()
        d2 = torch.addmm(bank.square().sum(1), q, bank.T, alpha=-2.0)  # |b|^2 - 2 q.b
        d2 = (d2 + q.square().sum(1, keepdim=True)).clamp_min_(0)
        nearest = torch.topk(d2, self.k + 1, dim=1, largest=False).values
        # the row itself: a distance far below the codes' own scale (float32 cancellation
        # leaves ~1e-7 of the squared norms where the exact distance is 0)
        itself = nearest[:, :1] <= 1e-5 * (q.square().sum(1, keepdim=True) + 1e-12)
        kept = torch.where(itself, nearest[:, 1:], nearest[:, :-1])
        return kept.sqrt().mean(dim=1)

    def isolation(self, x: Tensor) -> Tensor:
        """Each row's isolation score (higher = isolated sooner = more unusual)."""
        return self.forest.score(x.float().flatten(1))

    def tails(self, x: Tensor) -> Tensor:
        """ECOD's score of each row: over the input columns, the sum of ``-log`` of the
        smaller of the value's left and right empirical tail probabilities."""
        x = x.float().flatten(1)
        q = torch.as_tensor(self.quantiles, device=x.device)
        values = x.T.contiguous()  # columns x rows: one sorted sequence per column
        at_or_below = torch.searchsorted(q, values, right=True)
        at_or_above = q.shape[1] - torch.searchsorted(q, values, right=False)
        smaller = torch.minimum(at_or_below, at_or_above).float()
        return -torch.log((smaller + 1.0) / (q.shape[1] + 1.0)).sum(dim=0)

    def save(self, folder: str | Path) -> None:
        """Write the codes and quantiles (``.npy``) and the forest (JSON) into ``folder``."""
        out = Path(folder)
        np.save(out / CODES_FILE, self.bank, allow_pickle=False)
        np.save(out / TAILS_FILE, self.quantiles, allow_pickle=False)
        (out / FOREST_FILE).write_text(json.dumps({"k": self.k, **self.forest.to_dict()}))

    @classmethod
    def load(cls, folder: str | Path) -> Detectors:
        """Read what :meth:`save` wrote (no pickle); a missing file names itself."""
        src = Path(folder)
        for name in (CODES_FILE, FOREST_FILE, TAILS_FILE):
            if not (src / name).is_file():
                raise FileNotFoundError(
                    f"{src / name} is missing: a model scored with 'ensemble' keeps its "
                    "training codes, isolation forest and column quantiles there"
                )
        data = json.loads((src / FOREST_FILE).read_text())
        bank = np.load(src / CODES_FILE, allow_pickle=False).astype(np.float32)
        quantiles = np.load(src / TAILS_FILE, allow_pickle=False).astype(np.float32)
        return cls(bank, IsolationForest.from_dict(data), quantiles, int(data["k"]))
