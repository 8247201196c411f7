"""The two detectors the ``ensemble`` anomaly score adds to a model's reconstruction error:
the distance of a row's code to its nearest training codes, and how easily an isolation
forest isolates the row's inputs.

Stored beside the model's ``model.json``, without pickle: the training codes as ``.npy``
(loaded with ``allow_pickle=False``) and the isolation forest as JSON.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ae_models.isolation import IsolationForest

NEIGHBORS = 10  # the score is the mean distance to this many nearest training codes
BANK_ROWS = 4096  # training codes kept for the neighbours, at most (a uniform sample)
CODES_FILE = "score-codes.npy"
FOREST_FILE = "score-isolation.json"


@dataclass(frozen=True)
class Detectors:
    """A bounded sample of training codes (for the neighbour distance) and an isolation
    forest on the training inputs."""

    bank: np.ndarray  # float32, rows x code size
    forest: IsolationForest
    k: int = NEIGHBORS

    @classmethod
    def fit(cls, codes: np.ndarray, x: np.ndarray, seed: int = 0) -> Detectors:
        """Keep a uniform sample of at most :data:`BANK_ROWS` of the training ``codes`` and
        grow the isolation forest on the training inputs ``x``."""
        rng = np.random.default_rng(seed)
        codes = np.asarray(codes, np.float32)
        pick = np.sort(rng.choice(len(codes), min(BANK_ROWS, len(codes)), replace=False))
        flat = np.asarray(x, np.float32).reshape(len(x), -1)
        forest = IsolationForest.fit(flat, seed=int(rng.integers(2**31)))
        if len(pick) < 2:
            raise ValueError("the ensemble score needs at least 2 training rows")
        return cls(np.ascontiguousarray(codes[pick]), forest, min(NEIGHBORS, len(pick) - 1))

    def neighbor_distance(self, codes: Tensor) -> Tensor:
        """Each code's mean Euclidean distance to its ``k`` nearest codes in the bank. A bank
        code at distance (numerically) zero counts as the row itself and is passed over once,
        so a training row scores as any other row would: scoring the training rows again
        gives their training scores."""
        bank = torch.as_tensor(self.bank, device=codes.device)
        q = codes.float()
        d2 = q.square().sum(1, keepdim=True) + bank.square().sum(1) - 2.0 * q @ bank.T
        d2 = d2.clamp_min(0)
        nearest = torch.topk(d2, self.k + 1, dim=1, largest=False).values
        # the row itself: a distance far below the codes' own scale (float32 cancellation
        # leaves ~1e-7 of the squared norms where the exact distance is 0)
        itself = nearest[:, :1] <= 1e-5 * (q.square().sum(1, keepdim=True) + 1e-12)
        kept = torch.where(itself, nearest[:, 1:], nearest[:, :-1])
        return kept.sqrt().mean(dim=1)

    def isolation(self, x: Tensor) -> Tensor:
        """Each row's isolation score (higher = isolated sooner = more unusual)."""
        return self.forest.score(x.float().flatten(1))

    def save(self, folder: str | Path) -> None:
        """Write the codes (``.npy``) and the forest (JSON) into ``folder``."""
        out = Path(folder)
        np.save(out / CODES_FILE, self.bank, allow_pickle=False)
        (out / FOREST_FILE).write_text(json.dumps({"k": self.k, **self.forest.to_dict()}))

    @classmethod
    def load(cls, folder: str | Path) -> Detectors:
        """Read what :meth:`save` wrote (no pickle); a missing file names itself."""
        src = Path(folder)
        for name in (CODES_FILE, FOREST_FILE):
            if not (src / name).is_file():
                raise FileNotFoundError(
                    f"{src / name} is missing: a model scored with 'ensemble' keeps its "
                    "training codes and isolation forest there"
                )
        data = json.loads((src / FOREST_FILE).read_text())
        bank = np.load(src / CODES_FILE, allow_pickle=False).astype(np.float32)
        return cls(bank, IsolationForest.from_dict(data), int(data["k"]))
