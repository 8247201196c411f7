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
Streaming = Literal["auto", "always", "never"]
Strategy = Literal["single", "ddp"]
MEMORY_SHARE = 0.25  # of the memory available at the start: the default budget for resident rows


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
    streaming: Streaming = field(
        default="auto",
        metadata={
            "doc": "auto: stream training rows from Parquet by row groups when they exceed "
            "memory_budget_gb, else hold them in memory; always; never"
        },
    )
    memory_budget_gb: float | None = field(
        default=None,
        metadata={
            "doc": "GB the training and validation rows may take in memory (float32); null: "
            "a quarter of the memory available when training starts"
        },
    )
    shuffle_mb: float = field(
        default=128.0,
        metadata={
            "doc": "streaming: MB of float32 rows shuffled together in memory (row groups "
            "also come in a new random order each epoch)"
        },
    )
    strategy: Strategy = field(
        default="single",
        metadata={
            "doc": "single: one process; ddp: PyTorch DistributedDataParallel over "
            "train.processes processes (gloo on CPU, nccl on CUDA), each on its own shard"
        },
    )
    processes: int | Literal["auto"] = field(
        default="auto",
        metadata={"doc": "ddp: processes per machine; auto: one per GPU with CUDA, else 2"},
    )
    nodes: int = field(
        default=1,
        metadata={"doc": "ddp: machines taking part (more than 1 needs train.rendezvous)"},
    )
    rendezvous: str | None = field(
        default=None,
        metadata={
            "doc": "ddp on several machines: host:port of the c10d rendezvous every machine "
            "joins (docs/scaling-out.md); null: this machine alone"
        },
    )
    collective_timeout: float = field(
        default=300.0,
        metadata={"doc": "ddp: seconds a rank waits on the others before the run fails"},
    )

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
        if self.streaming not in ("auto", "always", "never"):
            raise ValueError(
                f"streaming must be 'auto', 'always' or 'never', got {self.streaming!r}"
            )
        if self.memory_budget_gb is not None and not self.memory_budget_gb > 0:
            raise ValueError(f"memory_budget_gb must be > 0, got {self.memory_budget_gb}")
        if not self.shuffle_mb > 0:
            raise ValueError(f"shuffle_mb must be > 0, got {self.shuffle_mb}")
        if self.strategy not in ("single", "ddp"):
            raise ValueError(f"strategy must be 'single' or 'ddp', got {self.strategy!r}")
        if self.processes != "auto" and (
            isinstance(self.processes, bool)
            or not isinstance(self.processes, int)
            or self.processes < 1
        ):
            raise ValueError(f"processes must be >= 1 or 'auto', got {self.processes!r}")
        if self.nodes < 1:
            raise ValueError(f"nodes must be >= 1, got {self.nodes}")
        if self.nodes > 1 and not self.rendezvous:
            raise ValueError(
                f"nodes={self.nodes} needs rendezvous: the host:port every machine joins"
            )
        if not self.collective_timeout > 0:
            raise ValueError(f"collective_timeout must be > 0, got {self.collective_timeout}")
        if self.lr_schedule not in ("onecycle", "plateau", "cosine", "none"):
            raise ValueError(
                "lr_schedule must be 'onecycle', 'plateau', 'cosine' or 'none', "
                f"got {self.lr_schedule!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of the config."""
        return dataclasses.asdict(self)

    def memory_budget(self, available: int) -> int:
        """Bytes the resident training rows may take, ``available`` bytes being free now."""
        if self.memory_budget_gb is not None:
            return int(self.memory_budget_gb * (1 << 30))
        return int(available * MEMORY_SHARE)

    def streams(self, matrix_bytes: int, available: int) -> bool:
        """Whether training rows of ``matrix_bytes`` stream rather than stay in memory."""
        if self.streaming != "auto":
            return self.streaming == "always"
        return matrix_bytes > self.memory_budget(available)

    def shuffle_rows(self, width: int) -> int:
        """Rows of ``width`` float32 values that ``shuffle_mb`` holds (at least 1)."""
        return max(1, int(self.shuffle_mb * (1 << 20)) // (4 * max(1, width)))

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
