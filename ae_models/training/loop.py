"""One generic training loop for every variant.

Adam (fused where the device supports it) with a one-cycle, plateau or cosine schedule,
validation with early stopping that restores the best epoch, gradient clipping, mixed
precision (bf16 autocast on CPUs with native bf16, bf16/fp16 on GPUs), a checkpoint after every
epoch and exact resume, and callbacks for progress and tracking. The rows come as a
:class:`~ae_models.training.streaming.Rows`: resident as one tensor (each epoch shuffled in
contiguous chunks so batches are plain slices), or streamed from Parquet or a memory-mapped array.

Run in every process of a data-parallel group (``torch.distributed`` initialized, see
:mod:`ae_models.training.distributed`), the same loop trains a DistributedDataParallel copy of
the model on this rank's shard: every rank takes the same number of steps, losses are summed
over the ranks, rank 0 alone writes checkpoints (with every rank's random state) and a resumed
run hands rank 0's checkpoint to every rank.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import math
import os
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from ae_models.runtime import autocast, resolve_precision, seed_everything, select_device
from ae_models.training.config import Precision, TrainConfig
from ae_models.training.cpus import CpuShare
from ae_models.training.streaming import InMemoryRows, Rows, is_rows
from ae_models.variants.base import Autoencoder, reconstruction_error

log = logging.getLogger(__name__)
CHECKPOINT = "checkpoint.pt"


class Callback(Protocol):
    """Receives ``{"epoch", "train_loss", "val_loss", "lr", "seconds"}`` after every epoch.

    Callbacks may also define ``on_train_begin(info: dict)`` and ``on_train_end(result)``.
    """

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None: ...


# set when the process is asked to stop (SIGTERM, see aepipe's CLI): a training loop ends at
# its next batch, so the process can exit instead of training on in a worker thread
STOP = threading.Event()


class Stopped(RuntimeError):
    """Training ended early because :data:`STOP` was set."""


@dataclass
class TrainResult:
    """What a training run produced besides the (best) weights left in the model."""

    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    best_val_loss: float = math.inf
    stopped_early: bool = False
    resumed_from: int = 0
    device: str = "cpu"
    precision: str = "fp32"
    seconds: float = 0.0
    batch_size: int = 0  # rows per batch, as ``TrainConfig.batch_size`` resolved

    @property
    def samples_per_second(self) -> float:
        """Training throughput over the epochs run in this call."""
        run = [h for h in self.history if h["epoch"] > self.resumed_from]
        secs = sum(h["train_seconds"] for h in run)
        return sum(h["rows"] for h in run) / secs if secs else 0.0


def as_tensor(x: np.ndarray | Tensor) -> Tensor:
    """A float32 CPU tensor view of ``x``."""
    if isinstance(x, Tensor):
        return x.detach().to("cpu", torch.float32)
    arr = np.ascontiguousarray(x, dtype=np.float32)
    return torch.from_numpy(arr if arr.flags.writeable else arr.copy())  # a read-only memmap


def as_rows(x: np.ndarray | Tensor | Rows, seed: int = 0) -> Rows:
    """``x`` as training rows: :class:`~ae_models.training.streaming.Rows` as they are, arrays and
    tensors resident in memory."""
    if is_rows(x):
        return x  # type: ignore[return-value]
    return InMemoryRows(as_tensor(x), seed)  # type: ignore[arg-type]


class ProcessGroup:
    """This process's place in a data-parallel run (one process alone when
    ``torch.distributed`` is not initialized): its rank, the world size, and the collective
    operations the loop needs."""

    def __init__(self, device: torch.device) -> None:
        self.on = dist.is_available() and dist.is_initialized()
        self.rank = dist.get_rank() if self.on else 0
        self.world = dist.get_world_size() if self.on else 1
        nccl = self.on and dist.get_backend() == "nccl"
        self.device = device if nccl else torch.device("cpu")  # where reductions run

    def sum(self, *values: float) -> list[float]:
        """``values`` summed over the ranks."""
        if not self.on:
            return [float(v) for v in values]
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return [float(v) for v in t.tolist()]

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if not self.on:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0, device=self.device)
        return box[0]

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order, on every rank."""
        if not self.on:
            return [obj]
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def wrap(self, model: Autoencoder, device: torch.device) -> torch.nn.Module:
        """The module to train: a DistributedDataParallel copy of ``model`` in a group."""
        if not self.on:
            return model
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)


def _rank_batches(
    rows: Rows, epoch: int, batch_size: int, generator: torch.Generator | None, steps: int
) -> Iterator[Tensor]:
    """Exactly ``steps`` batches of ``rows`` for one epoch: in a group every rank must step
    as often as the others, so a smaller shard starts over (in a new order) when it runs out,
    and a larger one stops early."""
    done, attempt = 0, 0
    while done < steps:
        for xb in rows.epoch_batches(epoch + 1_000_000 * attempt, batch_size, generator):
            yield xb
            done += 1
            if done == steps:
                return
        attempt += 1


def _loss_sum(
    model: Autoencoder,
    rows: Rows,
    batch_size: int,
    device: torch.device,
    precision: str,
    trim: float = 0.0,
) -> tuple[float, int]:
    """Row-weighted sum of ``model``'s training objective over ``rows`` and the row count."""
    model.eval()
    total = torch.zeros((), dtype=torch.float64, device=device)
    n = 0
    with torch.no_grad():
        for batch in rows.ordered_batches(batch_size):
            xb = batch.to(device, non_blocking=True)
            with autocast(device, precision):
                out = model(xb)
                loss = model.trimmed_loss(xb, out, trim)
            total += loss.detach().double() * len(xb)
            n += len(xb)
    return float(total), n


def evaluate_loss(
    model: Autoencoder,
    x: Tensor | Rows,
    batch_size: int,
    device: torch.device,
    precision: str,
    trim: float = 0.0,
) -> float:
    """Mean training objective of ``model`` over ``x`` (row-weighted), in eval mode; with
    ``trim``, each batch's worst-reconstructed share of rows left out."""
    total, n = _loss_sum(model, as_rows(x), batch_size, device, precision, trim)
    return total / max(n, 1)


def _make_optimizer(model: Autoencoder, cfg: TrainConfig, device: torch.device):
    kwargs: dict[str, Any] = {"lr": cfg.lr, "weight_decay": cfg.weight_decay}
    if device.type in ("cpu", "cuda"):
        kwargs["fused"] = True
    try:
        return torch.optim.Adam(model.parameters(), **kwargs)
    except (RuntimeError, TypeError):  # fused kernels missing on this build/device
        kwargs.pop("fused", None)
        return torch.optim.Adam(model.parameters(), **kwargs)


ONECYCLE_MIN_STEPS = 4


def _make_scheduler(opt: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int) -> Any:
    if cfg.lr_schedule == "onecycle":
        total = cfg.epochs * steps_per_epoch
        if total < ONECYCLE_MIN_STEPS:  # no room to warm up and anneal: a constant rate
            return None
        # at least one step of warm-up: with 4 steps, a quarter of them is none, and
        # OneCycleLR divides by the warm-up's length
        return torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=cfg.lr, total_steps=total, pct_start=max(0.25, 1.5 / total)
        )
    if cfg.lr_schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            opt, factor=0.5, patience=max(cfg.patience // 3, 2)
        )
    if cfg.lr_schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)
    return None


RUN_ONLY = (
    "checkpoint_dir",
    "resume",
    "streaming",
    "memory_budget_gb",
    "collective_timeout",
    "rendezvous",
)  # settings that change how a run goes, not what it computes


def run_fingerprint(
    model: Autoencoder, cfg: TrainConfig, n_train: int, mode: str = "memory"
) -> str:
    """What a checkpoint must match to be resumed: model config, the shapes of its weights
    (a default that changed between versions, such as the hidden widths, changes them),
    training config, data size, and whether rows streamed (another order of batches)."""
    train = {k: v for k, v in cfg.to_dict().items() if k not in RUN_ONLY}
    shapes = [[name, list(t.shape)] for name, t in model.state_dict().items()]
    blob = json.dumps(
        [model.model_name, model.config.to_dict(), shapes, train, n_train, mode], sort_keys=True
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # a crash mid-write never leaves a half checkpoint


def _load_checkpoint(path: Path, fingerprint: str) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # unreadable or not ours: start over, loudly
        log.warning("ignoring unreadable checkpoint %s: %s", path, err)
        return None
    if state.get("fingerprint") != fingerprint:
        log.warning("checkpoint %s is from another model, config or data; starting over", path)
        return None
    return state


def _call(callbacks: Sequence[Any], hook: str, *args: Any) -> None:
    for cb in callbacks:
        fn = getattr(cb, hook, None)
        if fn is not None:
            fn(*args)


class _Run:
    """One call of :func:`train`: the rows, the optimizer and its schedule, the best epoch
    so far and the checkpoint, each step a method of its own."""

    def __init__(
        self,
        model: Autoencoder,
        x_train: np.ndarray | Tensor | Rows,
        x_val: np.ndarray | Tensor | Rows | None,
        cfg: TrainConfig,
    ) -> None:
        self.model, self.cfg = model, cfg
        self.generator = seed_everything(cfg.seed)
        self.device = device = select_device(cfg.device)
        self.group = group = ProcessGroup(device)
        rows = as_rows(x_train, cfg.seed)
        val = as_rows(x_val, cfg.seed) if x_val is not None and len_rows(x_val) else None
        total, val_total = group.sum(rows.rows, val.rows if val is not None else 0)
        self.total_rows = int(total)
        if self.total_rows == 0:
            raise ValueError("cannot train on 0 rows")
        if val_total and val is None:  # this rank's shard of the validation rows is empty
            val = InMemoryRows(torch.zeros((0, rows.width)))
        # the input width decides bf16 on the CPU; a resident tensor of images (not rows x
        # features) counts as wide, as it always has
        flat = not isinstance(rows, InMemoryRows) or rows.x.ndim == 2
        self.precision = resolve_precision(
            cfg.precision, device, width=rows.width if flat else None
        )
        if device.type != "cpu":  # resident rows move to the device once
            rows, val = _to_device(rows, device), _to_device(val, device)
        self.rows, self.val = rows, val
        model.to(device)
        global_batch = cfg.rows_per_batch(self.total_rows)
        self.batch_size = max(1, global_batch // group.world)  # rows per rank: one global batch
        self.steps = math.ceil(self.total_rows / global_batch)
        self.streaming = not isinstance(rows, InMemoryRows)
        # one process on resident rows: the shuffle's state is checkpointed (as it always
        # was); streamed rows and ranks draw each epoch's order from (seed, epoch, rank) alone
        self.shuffle = self.generator if group.world == 1 and not self.streaming else None
        self.net = group.wrap(model, device)
        self.opt = _make_optimizer(model, cfg, device)
        self.scheduler = _make_scheduler(self.opt, cfg, self.steps)
        self.per_step = self.scheduler is not None and cfg.lr_schedule == "onecycle"
        # fp16's narrow exponent underflows small gradients: the loss is scaled up before
        # backward and the gradients unscaled before clipping and the step (off for fp32, bf16)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.precision == "fp16")
        self.result = TrainResult(
            device=str(device), precision=self.precision, batch_size=global_batch
        )
        self.best_state: dict[str, Tensor] | None = None
        self.since_best, self.first_epoch = 0, 1
        self.ckpt_path = Path(cfg.checkpoint_dir) / CHECKPOINT if cfg.checkpoint_dir else None
        mode = ("stream" if self.streaming else "memory") + (
            f"-ddp{group.world}" if group.on else ""
        )
        self.fingerprint = run_fingerprint(model, cfg, self.total_rows, mode)

    def resume(self) -> None:
        """Pick up after the last finished epoch of a checkpoint of this very run (rank 0
        reads it, every rank resumes from it); nothing when there is none."""
        if self.ckpt_path is None or not self.cfg.resume:
            return
        group = self.group
        mine = _load_checkpoint(self.ckpt_path, self.fingerprint) if group.rank == 0 else None
        state = group.broadcast(mine)
        if state is None:
            return
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        result = self.result
        self.best_state = state["best_state"]
        result.history = list(state["history"])
        result.best_epoch, result.best_val_loss = state["best_epoch"], state["best_val_loss"]
        self.since_best, self.first_epoch = state["since_best"], state["epoch"] + 1
        result.resumed_from = state["epoch"]
        self.generator.set_state(state["rng_shuffle"])
        ranks = state.get("rng_torch_ranks") or [state["rng_torch"]]
        torch.set_rng_state(ranks[group.rank] if len(ranks) == group.world else ranks[0])
        log.info("resuming from %s after epoch %d", self.ckpt_path, state["epoch"])
        if state.get("finished"):
            self.first_epoch = self.cfg.epochs + 1
            result.stopped_early = state.get("stopped_early", False)

    def begin_info(self) -> dict[str, Any]:
        """What ``on_train_begin`` callbacks are told."""
        return {
            "epochs": self.cfg.epochs,
            "start_epoch": self.first_epoch,
            "rows": self.total_rows,
            "device": str(self.device),
            "precision": self.precision,
            "streaming": self.streaming,
            "processes": self.group.world,
        }

    def fit_epoch(self, epoch: int, share: Any) -> tuple[float, float]:
        """One pass over this rank's training rows: the loss summed over the ranks' rows,
        and those rows. ``share``: this loop's CPU share (ticked a batch), or a no-op."""
        cfg, model, device, opt, scaler = self.cfg, self.model, self.device, self.opt, self.scaler
        self.net.train()
        total = torch.zeros((), dtype=torch.float64, device=device)
        seen = 0
        batches = (
            _rank_batches(self.rows, epoch, self.batch_size, self.shuffle, self.steps)
            if self.group.on
            else self.rows.epoch_batches(epoch, self.batch_size, self.shuffle)
        )
        for batch in batches:
            if STOP.is_set():
                raise Stopped(
                    f"training stopped in epoch {epoch} by a termination signal; the next "
                    "run with the same settings resumes from its last checkpoint"
                )
            if isinstance(share, CpuShare):
                share.tick()
            xb = batch.to(device, non_blocking=True)
            with autocast(device, self.precision):
                out = self.net(xb)
                loss = model.trimmed_loss(xb, out, self.trim(epoch))
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if cfg.grad_clip:
                scaler.unscale_(opt)  # clip the true gradients, not the scaled ones
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            scaler.step(opt)  # skipped when the scaled gradients overflowed
            scaler.update()
            if self.per_step:
                self.scheduler.step()
            total += loss.detach().double() * len(xb)
            seen += len(xb)
        loss_sum, loss_rows = self.group.sum(float(total), seen)
        train_loss = loss_sum / max(loss_rows, 1)
        if not math.isfinite(train_loss):
            raise FloatingPointError(
                f"training loss became {train_loss} in epoch {epoch}; lower lr (now "
                f"{cfg.lr:g}) or check the input for extreme values"
            )
        return train_loss, loss_rows

    def start_as_best(self) -> None:
        """A model whose untrained weights are a baseline (PCA): their validation loss is the
        one to beat (epoch 0), so the weights left in the model are never worse than the
        baseline on the validation rows. Nothing on a resumed run or without validation rows."""
        if not self.model.starts_from_a_baseline or self.first_epoch != 1 or self.val is None:
            return
        result = self.result
        result.best_val_loss, result.best_epoch = self.val_loss(0, math.inf), 0
        self.best_state = copy.deepcopy(self.model.state_dict())

    def trim(self, epoch: int) -> float:
        """Robust training: after the warm-up, each batch's worst-reconstructed rows (likely
        anomalies in contaminated data) are left out of the gradient and the validation loss."""
        return self.cfg.trim_fraction if epoch > self.cfg.trim_warmup else 0.0

    def val_loss(self, epoch: int, train_loss: float) -> float:
        """The validation loss over every rank's validation rows (the training loss when
        there are none)."""
        if self.val is None:
            return train_loss
        val_sum, val_rows = self.group.sum(
            *_loss_sum(
                self.model,
                self.val,
                max(self.batch_size, 2048),
                self.device,
                self.precision,
                self.trim(epoch),
            )
        )
        return val_sum / max(val_rows, 1)

    def end_epoch(self, epoch: int, logs: dict[str, float]) -> bool:
        """Keep the epoch's record and the best weights, step an epoch-wise schedule, write
        the checkpoint; whether early stopping ends the run here."""
        cfg, result = self.cfg, self.result
        val_loss = logs["val_loss"]
        result.history.append(logs)
        if val_loss < result.best_val_loss - cfg.min_delta:
            result.best_val_loss, result.best_epoch, self.since_best = val_loss, epoch, 0
            self.best_state = copy.deepcopy(self.model.state_dict())
        else:
            self.since_best += 1
        if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            self.scheduler.step(val_loss)
        elif self.scheduler is not None and not self.per_step:
            self.scheduler.step()
        stop = bool(cfg.patience) and self.since_best >= cfg.patience
        self.checkpoint(epoch, stop)
        return stop

    def checkpoint(self, epoch: int, stop: bool) -> None:
        """Everything a resume needs, after ``epoch`` (rank 0 writes it, with every rank's
        random state); nothing without a checkpoint folder."""
        if self.ckpt_path is None:
            return
        rng_ranks = self.group.gather(torch.get_rng_state())
        if self.group.rank != 0:
            return
        result = self.result
        _save_checkpoint(
            self.ckpt_path,
            {
                "fingerprint": self.fingerprint,
                "epoch": epoch,
                "model": self.model.state_dict(),
                "optimizer": self.opt.state_dict(),
                "scheduler": self.scheduler.state_dict() if self.scheduler is not None else {},
                "scaler": self.scaler.state_dict(),
                "best_state": self.best_state,
                "best_epoch": result.best_epoch,
                "best_val_loss": result.best_val_loss,
                "since_best": self.since_best,
                "history": result.history,
                "rng_shuffle": self.generator.get_state(),
                "rng_torch": torch.get_rng_state(),
                "rng_torch_ranks": rng_ranks,
                "finished": stop or epoch == self.cfg.epochs,
                "stopped_early": stop,
            },
        )


def train(
    model: Autoencoder,
    x_train: np.ndarray | Tensor | Rows,
    x_val: np.ndarray | Tensor | Rows | None = None,
    config: TrainConfig | None = None,
    callbacks: Sequence[Callback] = (),
) -> TrainResult:
    """Train ``model`` in place and leave it holding the weights of its best validation epoch.

    ``x_train`` and ``x_val`` are arrays, tensors or :class:`~ae_models.training.streaming.Rows`
    (streamed from Parquet or a memory-mapped array). Without ``x_val`` the training loss
    drives the schedule and early stopping. With ``config.checkpoint_dir`` every epoch ends
    with a checkpoint there, and a later call with the same model, config and data resumes
    after the last finished epoch; on the CPU the result is the same as a run that was never
    interrupted. In a data-parallel group each rank passes its own shard.
    """
    cfg = config or TrainConfig()
    run = _Run(model, x_train, x_val, cfg)
    run.resume()
    run.start_as_best()
    result = run.result
    _call(callbacks, "on_train_begin", run.begin_info())
    start = time.perf_counter()
    # on the CPU, this loop's share of the cores, rebalanced as other loops start and end
    share = CpuShare() if run.device.type == "cpu" else contextlib.nullcontext()
    with share:
        for epoch in range(run.first_epoch, cfg.epochs + 1):
            t0 = time.perf_counter()
            train_loss, rows = run.fit_epoch(epoch, share)
            train_seconds = time.perf_counter() - t0
            logs = {
                "epoch": epoch,
                "train_loss": train_loss,
                "val_loss": run.val_loss(epoch, train_loss),
                "lr": run.opt.param_groups[0]["lr"],
                "seconds": time.perf_counter() - t0,
                "train_seconds": train_seconds,
                "rows": rows,
            }
            stop = run.end_epoch(epoch, logs)
            _call(callbacks, "on_epoch_end", epoch, logs)
            if stop:
                result.stopped_early = True
                log.info(
                    "early stop at epoch %d (best %d, val %.5f)",
                    epoch,
                    result.best_epoch,
                    result.best_val_loss,
                )
                break
    if run.best_state is not None:
        model.load_state_dict(run.best_state)
    model.eval()
    result.seconds = time.perf_counter() - start
    _call(callbacks, "on_train_end", result)
    return result


def len_rows(x: np.ndarray | Tensor | Rows) -> int:
    """Row count of an array, a tensor or :class:`~ae_models.training.streaming.Rows`."""
    return int(x.rows) if is_rows(x) else len(x)  # type: ignore[union-attr,arg-type]


def _to_device(rows: Rows | None, device: torch.device) -> Rows | None:
    """Resident rows moved to ``device``; streamed rows stay as they are (batches move)."""
    if isinstance(rows, InMemoryRows):
        return InMemoryRows(rows.x.to(device), rows.seed, rows.rank)
    return rows


def forward_batches(
    model: Autoencoder,
    x: np.ndarray | Tensor | Rows,
    batch_size: int = 1024,
    device: str = "auto",
    precision: Precision = "fp32",
) -> Iterator[tuple[Tensor, Any]]:
    """Batches of (input on the device, model output) of ``x``, the model in eval mode and
    autocast as ``precision`` resolves for the device (call under inference mode). An array
    is converted a batch at a time (a memory-mapped one is never read whole); streamed
    :class:`~ae_models.training.streaming.Rows` come in source order."""
    dev = select_device(device)
    model.to(dev).eval()
    if is_rows(x):
        width: int | None = x.width  # type: ignore[union-attr]
        batches = x.ordered_batches(batch_size)  # type: ignore[union-attr]
    else:
        width = x.shape[1] if x.ndim == 2 else None  # type: ignore[union-attr]
        batches = (
            as_tensor(x[s : s + batch_size])  # type: ignore[index]
            for s in range(0, len(x), batch_size)  # type: ignore[arg-type]
        )
    mode = resolve_precision(precision, dev, width)
    with CpuShare() if dev.type == "cpu" else contextlib.nullcontext() as share:
        for batch in batches:
            if share is not None:
                share.tick()
            xb = batch.to(dev)
            with autocast(dev, mode):
                out = model(xb)
            yield xb, out


@torch.inference_mode()
def encode_and_score(
    model: Autoencoder,
    x: np.ndarray | Tensor,
    batch_size: int = 1024,
    device: str = "auto",
    precision: Precision = "fp32",
    bce: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Latent codes, per-row MSE and per-row BCE of ``x`` (NumPy float32), in batches.

    ``precision="auto"`` runs the network in bf16 where the hardware is fast at it (the rule of
    :func:`~ae_models.runtime.resolve_precision`), about 3x faster on wide inputs on AMX CPUs;
    the errors are always computed in fp32. ``bce=False`` skips the BCE (then ``None``), half
    the cost on wide inputs when only the MSE is wanted.
    """
    codes, mse, bces = [], [], []
    for xb, out in forward_batches(model, x, batch_size, device, precision):
        recon = out.recon.float()
        codes.append(out.latent.float().cpu())
        mse.append(reconstruction_error(xb, recon, "mse").cpu())
        if bce:
            bces.append(reconstruction_error(xb.clamp(0, 1), recon, "bce").cpu())
    k = model.config.code_size
    if not codes:
        empty = np.zeros(0, np.float32)
        return np.zeros((0, k), np.float32), empty, empty if bce else None
    return (
        torch.cat(codes).numpy(),
        torch.cat(mse).numpy(),
        torch.cat(bces).numpy() if bce else None,
    )
