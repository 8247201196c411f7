"""How to train, as plain data: the settings the pipeline's config validates and records.

Kept apart from the training loop so that reading or checking a config does not import
PyTorch (``aepipe features`` and ``--help`` start in a fraction of the time).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

Precision = Literal["auto", "fp32", "bf16", "fp16"]
Schedule = Literal["onecycle", "plateau", "cosine", "none"]


@dataclass(frozen=True)
class TrainConfig:
    """How to train: optimizer, schedule, stopping, device and precision, checkpoints, seed.

    ``trim_fraction`` > 0 trains robustly on data that holds anomalies: after
    ``trim_warmup`` epochs, the share ``trim_fraction`` of each batch's rows with the highest
    reconstruction loss is left out of the gradient (and of the validation loss that drives
    early stopping), so the model does not learn to reconstruct them.
    """

    epochs: int = field(default=100, metadata={"doc": "maximum training epochs"})
    batch_size: int | Literal["auto"] = field(
        default="auto",
        metadata={
            "doc": "rows per training batch; auto: about 50 steps an epoch, 16 to 256 rows "
            "(256 from 12,800 training rows up)"
        },
    )
    lr: float = field(default=1e-3, metadata={"doc": "Adam learning rate (the peak for onecycle)"})
    weight_decay: float = field(default=0.0, metadata={"doc": "Adam weight decay"})
    lr_schedule: Schedule = field(default="onecycle", metadata={"doc": "learning-rate schedule"})
    patience: int = field(
        default=15, metadata={"doc": "epochs without improvement before stopping; 0 = never"}
    )
    min_delta: float = field(
        default=1e-5, metadata={"doc": "smallest drop of the validation loss that counts"}
    )
    grad_clip: float | None = field(
        default=5.0, metadata={"doc": "gradient norm clip; null for none"}
    )
    seed: int = field(default=0, metadata={"doc": "seeds the model, the shuffles and the splits"})
    device: str = field(
        default="auto", metadata={"doc": "auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:1, mps"}
    )
    precision: Precision = field(
        default="auto",
        metadata={"doc": "auto: bf16 where the CPU/GPU computes it natively, else fp32"},
    )
    checkpoint_dir: str | None = field(
        default=None,
        metadata={
            "doc": "default: .aepipe/models/<dataset>/checkpoints/<hash>; relative: under "
            ".aepipe/models"
        },
    )
    resume: bool = field(
        default=True, metadata={"doc": "continue from a checkpoint of the same settings"}
    )
    trim_fraction: float = field(
        default=0.0,
        metadata={"doc": "robust training: leave each batch's worst-reconstructed share out"},
    )
    trim_warmup: int = field(default=5, metadata={"doc": "epochs before trimming starts"})

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size != "auto" and (
            isinstance(self.batch_size, bool)
            or not isinstance(self.batch_size, int)
            or self.batch_size < 1
        ):
            raise ValueError(f"batch_size must be >= 1 or 'auto', got {self.batch_size!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.patience < 0:
            raise ValueError(
                f"patience must be >= 0 (0 disables early stopping), got {self.patience}"
            )
        if not 0 <= self.trim_fraction < 0.5:
            raise ValueError(f"trim_fraction must be in [0, 0.5), got {self.trim_fraction}")
        if self.trim_warmup < 0:
            raise ValueError(f"trim_warmup must be >= 0, got {self.trim_warmup}")
        if self.lr_schedule not in ("onecycle", "plateau", "cosine", "none"):
            raise ValueError(
                "lr_schedule must be 'onecycle', 'plateau', 'cosine' or 'none', "
                f"got {self.lr_schedule!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of the config."""
        return dataclasses.asdict(self)

    def rows_per_batch(self, rows: int) -> int:
        """The batch size for ``rows`` training rows: ``batch_size``, or for ``"auto"`` about
        50 steps an epoch between 16 and 256 rows (a few hundred rows at 256 a batch would
        get 2 steps an epoch and learn nothing)."""
        if self.batch_size == "auto":
            return auto_batch_size(rows)
        return int(self.batch_size)


MAX_AUTO_CODE = 16


def auto_code_size(input_width: int) -> int:
    """The code width for ``input_width`` model inputs (one-hot levels counted): 16, or half
    the width for narrower data (6 inputs: 3), at least 1."""
    return max(1, min(MAX_AUTO_CODE, input_width // 2))


def auto_batch_size(rows: int) -> int:
    """About 50 steps an epoch, between 16 and 256 rows a batch (256 from 12,800 rows up)."""
    return int(min(256, max(16, rows // 50)))
