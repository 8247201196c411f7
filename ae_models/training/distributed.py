"""Data-parallel training (``train.strategy: ddp``): N processes, each training a
DistributedDataParallel copy of the model on its own shard of the Parquet row groups, the
gradients all-reduced after every step.

:func:`train_ddp` launches the processes the way ``torchrun`` does (PyTorch's elastic agent
with a c10d rendezvous; ``gloo`` on the CPU, ``nccl`` with one process per GPU), runs
:func:`~ae_models.training.loop.train` in each (:func:`run_rank`), replays rank 0's epochs to the
caller's callbacks as they finish, and leaves the best weights in the caller's model: the
same model, result and callbacks as single-process training.

Several machines: set ``train.nodes`` and ``train.rendezvous`` (``host:port`` of the machine
whose agent hosts the rendezvous). The training run writes its job (``ddp-job.json`` and
``ddp-initial.pt``) to its checkpoint folder, which every machine must see (a shared mount),
and logs the command the other machines start::

    torchrun --nnodes N --nproc-per-node P --rdzv-backend c10d \\
        --rdzv-endpoint HOST:PORT --rdzv-id RUN -m ae_models.training.distributed CHECKPOINT_DIR

A rank that dies ends the run: the agent stops the others and :class:`RankFailed` names the
rank in one line; a rank waiting on a collective operation gives up after
``train.collective_timeout`` seconds. Running the same training again resumes from the last
checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch

from ae_models.runtime import select_device
from ae_models.training.config import TrainConfig
from ae_models.training.loop import CHECKPOINT, TrainResult, train
from ae_models.training.streaming import ParquetSource
from ae_models.variants.base import Autoencoder
from ae_models.variants.registry import create_model

log = logging.getLogger(__name__)

JOB_FILE, INITIAL_FILE, EPOCHS_FILE = "ddp-job.json", "ddp-initial.pt", "ddp-epochs.jsonl"
RESULT_FILE, BEST_FILE = "ddp-result.json", "ddp-best.pt"  # rank 0's, when training ends
POLL_SECONDS = 0.2


class RankFailed(RuntimeError):
    """A process of a data-parallel training run failed; the run stopped."""


@dataclass(frozen=True)
class DdpJob:
    """What every rank needs to train its share: the model, the settings, the data, and where
    rank 0 reports its epochs (all JSON-ready; the initial weights lie beside the job)."""

    model_name: str
    model_config: dict[str, Any]
    train: dict[str, Any]
    source: ParquetSource
    val: ParquetSource | None
    streaming: bool
    folder: str  # the checkpoint folder: job, initial weights, rank 0's epoch lines

    def save(self, initial: dict[str, torch.Tensor]) -> Path:
        """Write the job and the initial weights to :attr:`folder`; the job file's path."""
        folder = Path(self.folder)
        folder.mkdir(parents=True, exist_ok=True)
        torch.save(initial, folder / INITIAL_FILE)
        (folder / JOB_FILE).write_text(json.dumps(dataclasses.asdict(self)))
        return folder / JOB_FILE

    @classmethod
    def load(cls, folder: str | Path) -> DdpJob:
        """The job saved in ``folder``."""
        data = json.loads((Path(folder) / JOB_FILE).read_text())

        def source(d: dict[str, Any] | None) -> ParquetSource | None:
            if d is None:
                return None
            where = tuple(d["where"]) if d.get("where") else None
            return ParquetSource(d["path"], tuple(d["columns"]), where)  # type: ignore[arg-type]

        return cls(**{**data, "source": source(data["source"]), "val": source(data["val"])})


def processes_for(cfg: TrainConfig, device: torch.device) -> int:
    """Processes per machine: ``train.processes``, or for ``auto`` one per GPU with CUDA and
    2 on the CPU."""
    if cfg.processes != "auto":
        return int(cfg.processes)
    if device.type == "cuda":
        return max(1, torch.cuda.device_count())
    return 2


class _EpochFile:
    """Rank 0's callback: each epoch's logs (and the start) as a JSON line the launching
    process reads."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _write(self, record: dict[str, Any]) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")

    def on_train_begin(self, info: dict[str, Any]) -> None:
        self._write({"event": "begin", "info": info})

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        self._write({"event": "epoch", "epoch": epoch, "logs": logs})


def run_rank(folder: str) -> None:
    """One rank's training (every process of the group runs it): join the process group,
    open this rank's shard, train; rank 0 writes the result and the best weights to
    ``folder``."""
    import torch.distributed as dist

    _die_with_parent()
    job = DdpJob.load(folder)
    cfg = TrainConfig(**job.train)
    device = select_device(cfg.device)
    if device.type == "cuda":  # one GPU per process of this machine
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
        cfg = dataclasses.replace(cfg, device=str(device))
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, timeout=timedelta(seconds=cfg.collective_timeout))
    rank, world = dist.get_rank(), dist.get_world_size()
    model = create_model(job.model_name, **job.model_config)
    model.load_state_dict(torch.load(Path(folder) / INITIAL_FILE, weights_only=True))
    opened = {
        "streaming": job.streaming,
        "seed": cfg.seed,
        "rank": rank,
        "world": world,
        "shuffle_rows": cfg.shuffle_rows(len(job.source.columns)),
    }
    rows = job.source.open(**opened)
    val = job.val.open(**opened) if job.val is not None else None
    callbacks = [_EpochFile(Path(folder) / EPOCHS_FILE)] if rank == 0 else []
    result = train(model, rows, val, cfg, callbacks)
    if rank == 0:
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        torch.save(state, Path(folder) / BEST_FILE)
        (Path(folder) / RESULT_FILE).write_text(json.dumps(dataclasses.asdict(result)))
    dist.barrier()  # every rank done before the group is torn down (gloo aborts otherwise)
    # torn down only after success: with a peer gone the teardown aborts (main() exits)
    dist.destroy_process_group()


def _die_with_parent() -> None:
    """On Linux, have the kernel stop this rank when the process that launched it dies (its
    agent runs in a thread, where PyTorch cannot install its signal handlers)."""
    if sys.platform.startswith("linux"):
        import contextlib
        import ctypes

        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def train_ddp(
    model: Autoencoder,
    source: ParquetSource,
    val: ParquetSource | None,
    cfg: TrainConfig,
    callbacks: Sequence[Any] = (),
    *,
    streaming: bool = False,
) -> TrainResult:
    """Train ``model`` data-parallel on ``source`` (early stopping on ``val``) and leave the
    best weights in it, as :func:`~ae_models.training.loop.train` does in one process.
    Raises :class:`RankFailed` naming the rank when a process fails."""
    if not isinstance(source, ParquetSource) or not (val is None or isinstance(val, ParquetSource)):
        raise TypeError(
            "train.strategy 'ddp' reads every rank's rows from a Parquet file (a "
            "ParquetSource), not from arrays in this process"
        )
    device = select_device(cfg.device)  # CUDA asked for where there is none: fails here
    if device.type == "mps":
        raise ValueError("train.strategy 'ddp' runs on CUDA GPUs or on the CPU, not on MPS")
    folder = Path(cfg.checkpoint_dir or tempfile.mkdtemp(prefix="aepipe-ddp-"))
    cfg = dataclasses.replace(cfg, checkpoint_dir=str(folder))
    job = DdpJob(
        model.model_name,
        model.config.to_dict(),
        cfg.to_dict(),
        source,
        val,
        streaming,
        str(folder),
    )
    job.save(model.state_dict())
    epochs = folder / EPOCHS_FILE
    for stale in (epochs, folder / RESULT_FILE, folder / BEST_FILE):
        stale.unlink(missing_ok=True)
    n = processes_for(cfg, device)
    run_id = uuid.uuid4().hex[:12]
    if cfg.nodes > 1:
        log.warning(
            "data-parallel training over %d machines: start it on each of the others with "
            "torchrun --nnodes %d --nproc-per-node %d --rdzv-backend c10d --rdzv-endpoint %s "
            "--rdzv-id %s -m ae_models.training.distributed %s",
            cfg.nodes,
            cfg.nodes,
            n,
            cfg.rendezvous,
            run_id,
            folder,
        )
    outcome: dict[str, Any] = {}
    launcher = threading.Thread(
        target=_launch, args=(cfg, n, run_id, str(folder), outcome), name="aepipe-ddp"
    )
    launcher.start()
    read = 0
    try:
        while True:  # rank 0's epochs reach the callbacks in this thread, as they finish
            alive = launcher.is_alive()
            read = _replay(epochs, read, callbacks)
            if not alive:
                break
            time.sleep(POLL_SECONDS)
    except BaseException:  # a callback failed, or the task was interrupted: stop the ranks
        _stop_ranks()
        launcher.join()
        raise
    launcher.join()
    if "error" in outcome:
        raise outcome["error"]
    model.load_state_dict(torch.load(folder / BEST_FILE, map_location="cpu", weights_only=True))
    result = TrainResult(**json.loads((folder / RESULT_FILE).read_text()))
    model.to(device).eval()
    for cb in callbacks:
        if hasattr(cb, "on_train_end"):
            cb.on_train_end(result)
    return result


def _stop_ranks() -> None:
    """SIGTERM this process's training ranks (Linux: its children running
    ``ae_models.training.distributed``), so that the agent sees them end and returns."""
    me = str(os.getpid())
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            stat = (proc / "stat").read_text()
            parent = stat.rsplit(")", 1)[1].split()[1]
            if (
                parent == me
                and b"ae_models.training.distributed" in (proc / "cmdline").read_bytes()
            ):
                os.kill(int(proc.name), signal.SIGTERM)
        except (OSError, IndexError, ValueError):
            continue


def _launch(cfg: TrainConfig, n: int, run_id: str, folder: str, outcome: dict[str, Any]) -> None:
    """Start the ranks with PyTorch's elastic agent, each as ``python -m
    ae_models.training.distributed`` (what torchrun starts on other machines; a new interpreter, so
    the caller's script is not run again in it), and wait for them (in a thread of the
    launching process); ``outcome`` gets the ``error`` if one failed."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    _quiet_thread_warning()
    alone = cfg.nodes == 1 and not cfg.rendezvous
    config = LaunchConfig(
        min_nodes=cfg.nodes,
        max_nodes=cfg.nodes,
        nproc_per_node=n,
        run_id=run_id,
        rdzv_backend="c10d",
        rdzv_endpoint=cfg.rendezvous or "127.0.0.1:0",  # 0: a free port, this machine alone
        rdzv_configs={"timeout": int(max(60, cfg.collective_timeout))},
        max_restarts=0,  # a dead rank ends the run; running it again resumes
        monitor_interval=0.2,
        shutdown_timeout=10,  # seconds between the agent's SIGTERM and its SIGKILL
        local_addr="127.0.0.1" if alone else None,
    )
    try:
        elastic_launch(config, sys.executable)("-m", "ae_models.training.distributed", folder)
    except ChildFailedError as err:
        outcome["error"] = RankFailed(_failure_line(err, Path(folder)))
    except BaseException as err:
        outcome["error"] = err


class _NoThreadWarning(logging.Filter):
    """Drops the agent's warning that it runs in a thread and so installs no signal
    handlers: the processes it starts die with their parent anyway (``_die_with_parent``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "running on a child thread" not in record.getMessage()


def _quiet_thread_warning() -> None:
    """Install :class:`_NoThreadWarning` on the agent's logger, once."""
    agent = logging.getLogger("torch.distributed.elastic.multiprocessing.api")
    if not any(isinstance(f, _NoThreadWarning) for f in agent.filters):
        agent.addFilter(_NoThreadWarning())


def _failure_line(err: Any, folder: Path) -> str:
    """One line naming the rank that failed first, how, and where a rerun resumes."""
    rank, failure = min(err.failures.items(), key=lambda item: _blame(*item))
    if failure.exitcode < 0:
        how = f"was killed by {failure.signal_name()}"
    else:
        message = failure.message
        text = message.get("message", "") if isinstance(message, dict) else str(message or "")
        last = [line for line in str(text).splitlines() if line.strip()]
        how = f"failed (exit code {failure.exitcode})" + (f": {last[-1].strip()}" if last else "")
    done = _last_epoch(folder / CHECKPOINT)
    resume = (
        f"; the others were stopped, and running it again resumes after epoch {done}"
        if done
        else "; the others were stopped"
    )
    return f"data-parallel training rank {rank} (pid {failure.pid}) {how}{resume}"


def _blame(rank: int, failure: Any) -> tuple[int, int, int]:
    """Sort key putting the cause first: a rank that raised or was killed on its own, then
    one that aborted, then those the agent stopped (SIGTERM) or that lost their connection
    to the one that failed."""
    text = str(failure.message)
    if failure.exitcode == -signal.SIGTERM or any(
        m in text for m in ("Connection reset", "Connection closed", "Broken pipe", "timed out")
    ):
        order = 2
    else:
        order = 1 if failure.exitcode == -signal.SIGABRT else 0
    return order, int(failure.timestamp), rank


def _last_epoch(path: Path) -> int:
    """The last epoch the checkpoint at ``path`` holds (0 when none)."""
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True)["epoch"])
    except Exception:
        return 0


def _replay(path: Path, offset: int, callbacks: Sequence[Any]) -> int:
    """Call ``callbacks`` for the complete lines of ``path`` after byte ``offset``; the new
    offset."""
    try:
        with path.open("rb") as f:
            f.seek(offset)
            data = f.read()
    except FileNotFoundError:
        return offset
    end = data.rfind(b"\n") + 1
    for line in data[:end].splitlines():
        record = json.loads(line)
        for cb in callbacks:
            if record["event"] == "begin" and hasattr(cb, "on_train_begin"):
                cb.on_train_begin(record["info"])
            elif record["event"] == "epoch" and hasattr(cb, "on_epoch_end"):
                cb.on_epoch_end(record["epoch"], record["logs"])
    return offset + end


def _main(argv: list[str] | None = None) -> None:
    """``python -m ae_models.training.distributed CHECKPOINT_DIR`` under ``torchrun``: this
    machine's ranks of a data-parallel training another machine started."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        raise SystemExit("usage: torchrun ... -m ae_models.training.distributed CHECKPOINT_DIR")
    run_rank(args[0])


def main(argv: list[str] | None = None) -> None:
    """The rank's entry point, its error recorded where the agent reads it (so the launching
    process can name what failed)."""
    from torch.distributed.elastic.multiprocessing.errors import record

    try:
        record(_main)(argv)
    except BaseException:  # recorded for the agent; leave without the process group's
        sys.stderr.flush()  # teardown, which aborts (SIGABRT) when a peer has gone
        os._exit(1)
    # done: the results are on disk (rank 0 wrote them before the barrier). Leave without the
    # interpreter's teardown too: a native thread still joinable at exit made a finished rank
    # abort now and then ("terminate called without an active exception", SIGABRT), which
    # failed a run whose training had completed
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
