"""One generic training loop for every variant: Adam, LR schedule, early stopping, callbacks."""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np
import torch
from torch import Tensor

from ae_models.base import Autoencoder, reconstruction_error
from ae_models.runtime import Precision, autocast, resolve_precision, seed_everything, select_device

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """How to train: optimizer, schedule, stopping, device and precision, seed."""

    epochs: int = 100
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.0
    lr_schedule: Literal["plateau", "cosine", "none"] = "plateau"
    patience: int = 15
    min_delta: float = 1e-5
    grad_clip: float | None = 5.0
    seed: int = 0
    device: str = "auto"
    precision: Precision = "auto"

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.patience < 0:
            raise ValueError(
                f"patience must be >= 0 (0 disables early stopping), got {self.patience}"
            )
        if self.lr_schedule not in ("plateau", "cosine", "none"):
            raise ValueError(
                f"lr_schedule must be 'plateau', 'cosine' or 'none', got {self.lr_schedule!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of the config."""
        return dataclasses.asdict(self)


class Callback(Protocol):
    """Receives ``{"epoch", "train_loss", "val_loss", "lr", "seconds"}`` after every epoch."""

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None: ...


@dataclass
class TrainResult:
    """What a training run produced besides the (best) weights left in the model."""

    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    best_val_loss: float = math.inf
    stopped_early: bool = False
    device: str = "cpu"
    precision: str = "fp32"
    seconds: float = 0.0


def as_tensor(x: np.ndarray | Tensor) -> Tensor:
    """A float32 CPU tensor view of ``x``."""
    if isinstance(x, Tensor):
        return x.detach().to("cpu", torch.float32)
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))


def _batches(n: int, batch_size: int, generator: torch.Generator | None) -> list[Tensor]:
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    return list(order.split(batch_size))


@torch.no_grad()
def evaluate_loss(
    model: Autoencoder, x: Tensor, batch_size: int, device: torch.device, precision: str
) -> float:
    """Mean training objective of ``model`` over ``x`` (row-weighted), in eval mode."""
    model.eval()
    total = 0.0
    for idx in _batches(len(x), batch_size, None):
        xb = x[idx].to(device, non_blocking=True)
        with autocast(device, precision):
            out = model(xb)
            loss = model.loss(xb, out)
        total += float(loss) * len(idx)
    return total / max(len(x), 1)


def train(
    model: Autoencoder,
    x_train: np.ndarray | Tensor,
    x_val: np.ndarray | Tensor | None = None,
    config: TrainConfig | None = None,
    callbacks: Sequence[Callback] = (),
) -> TrainResult:
    """Train ``model`` in place and leave it holding the weights of its best validation epoch.

    Without ``x_val`` the training loss drives the schedule and early stopping.
    """
    cfg = config or TrainConfig()
    generator = seed_everything(cfg.seed)
    device = select_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    xt = as_tensor(x_train)
    xv = as_tensor(x_val) if x_val is not None and len(x_val) else None
    if len(xt) == 0:
        raise ValueError("cannot train on 0 rows")
    model.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler: Any = None
    if cfg.lr_schedule == "plateau":
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            opt, factor=0.5, patience=max(cfg.patience // 3, 2)
        )
    elif cfg.lr_schedule == "cosine":
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)

    result = TrainResult(device=str(device), precision=precision)
    best_state: dict[str, Tensor] | None = None
    since_best = 0
    start = time.perf_counter()
    for epoch in range(1, cfg.epochs + 1):
        t0 = time.perf_counter()
        model.train()
        total = 0.0
        for idx in _batches(len(xt), cfg.batch_size, generator):
            xb = xt[idx].to(device, non_blocking=True)
            with autocast(device, precision):
                out = model(xb)
                loss = model.loss(xb, out)
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"training loss became {float(loss)} at epoch {epoch}; lower lr "
                    f"(now {opt.param_groups[0]['lr']:g}) or check the input for extreme values"
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            total += float(loss.detach()) * len(idx)
        train_loss = total / len(xt)
        val_loss = (
            evaluate_loss(model, xv, cfg.batch_size * 4, device, precision)
            if xv is not None
            else train_loss
        )
        logs = {
            "epoch": epoch,
            "train_loss": train_loss,
            "val_loss": val_loss,
            "lr": opt.param_groups[0]["lr"],
            "seconds": time.perf_counter() - t0,
        }
        result.history.append(logs)
        for cb in callbacks:
            cb.on_epoch_end(epoch, logs)
        if val_loss < result.best_val_loss - cfg.min_delta:
            result.best_val_loss, result.best_epoch, since_best = val_loss, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            since_best += 1
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            scheduler.step(val_loss)
        elif scheduler is not None:
            scheduler.step()
        if cfg.patience and since_best >= cfg.patience:
            result.stopped_early = True
            log.info(
                "early stop at epoch %d (best %d, val %.5f)",
                epoch,
                result.best_epoch,
                result.best_val_loss,
            )
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    result.seconds = time.perf_counter() - start
    return result


@torch.no_grad()
def encode_and_score(
    model: Autoencoder, x: np.ndarray | Tensor, batch_size: int = 4096, device: str = "auto"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Latent codes, per-row MSE and per-row BCE of ``x`` (NumPy float32), in batches."""
    dev = select_device(device)
    model.to(dev).eval()
    xt = as_tensor(x)
    codes, mse, bce = [], [], []
    for start in range(0, len(xt), batch_size):
        xb = xt[start : start + batch_size].to(dev)
        out = model(xb)
        codes.append(out.latent.float().cpu())
        mse.append(reconstruction_error(xb, out.recon, "mse").cpu())
        bce.append(reconstruction_error(xb.clamp(0, 1), out.recon, "bce").cpu())
    if not codes:
        k = model.config.code_size
        return np.zeros((0, k), np.float32), np.zeros(0, np.float32), np.zeros(0, np.float32)
    return (
        torch.cat(codes).numpy(),
        torch.cat(mse).numpy(),
        torch.cat(bce).numpy(),
    )
