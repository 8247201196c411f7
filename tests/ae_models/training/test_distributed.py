"""Data-parallel training over gloo with 2 real processes launched by PyTorch's elastic agent:
it trains, a rank killed with SIGKILL ends the run with one line naming it, the run resumes
from the checkpoint and reaches the single-process model's loss."""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from sklearn.datasets import load_digits

import ae_models
from ae_models.training.config import TrainConfig
from ae_models.training.distributed import RankFailed, train_ddp
from ae_models.training.loop import evaluate_loss
from ae_models.training.streaming import ParquetSource

COLUMNS = tuple(f"p{i}" for i in range(64))
# two processes each take half of every global batch and see the rows in other orders than
# one process does: the same data and steps, not the same arithmetic. Measured: within 3 %.
LOSS_TOLERANCE = 0.10


@pytest.fixture(scope="module")
def digits_file(tmp_path_factory) -> tuple[str, dict[str, np.ndarray]]:
    """scikit-learn's digits (1,797 rows, 64 pixels in [0, 1]) as Parquet in row groups of
    150, with a split column (70 % train, 15 % val, 15 % test)."""
    x = load_digits().data.astype(np.float32) / 16.0
    u = np.random.default_rng(0).random(len(x))
    split = np.where(u < 0.7, "train", np.where(u < 0.85, "val", "test"))
    path = tmp_path_factory.mktemp("ddp") / "digits.parquet"
    table = pa.table({c: x[:, i] for i, c in enumerate(COLUMNS)} | {"split": split})
    pq.write_table(table, path, row_group_size=150)
    return str(path), {s: x[split == s] for s in ("train", "val", "test")}


def _sources(path: str) -> tuple[ParquetSource, ParquetSource]:
    return ParquetSource(path, COLUMNS, ("split", "train")), ParquetSource(
        path, COLUMNS, ("split", "val")
    )


def _config(**kw) -> TrainConfig:
    base = {
        "epochs": 8,
        "batch_size": 64,
        "patience": 0,
        "device": "cpu",
        "precision": "fp32",
        "strategy": "ddp",
        "processes": 2,
        "seed": 0,
    }
    return TrainConfig(**(base | kw))


def _test_loss(model, x: np.ndarray) -> float:
    return evaluate_loss(model, torch.from_numpy(x), 512, torch.device("cpu"), "fp32")


def _descends_from_this_process(pid: int) -> bool:
    """Whether ``pid``'s chain of parents reaches this test process: another test's training
    processes (a parallel pytest worker's) are not this test's."""
    me = os.getpid()
    while pid > 1:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return False
        pid = int(stat.rsplit(")", 1)[1].split()[1])  # the field after the state: ppid
        if pid == me:
            return True
    return False


def rank_pid(rank: int) -> int:
    """The pid of this test's training process of ``rank`` (its environment says)."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if b"ae_models.training.distributed" not in (proc / "cmdline").read_bytes():
                continue
            env = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in env and _descends_from_this_process(int(proc.name)):
            return int(proc.name)
    raise LookupError(f"no training process of rank {rank}")


class _KillRank:
    """Callback: SIGKILL the process of ``rank`` after ``epoch``, as the OOM killer would."""

    def __init__(self, rank: int, epoch: int) -> None:
        self.rank, self.epoch, self.seen = rank, epoch, []

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        self.seen.append(epoch)
        if epoch == self.epoch:
            os.kill(rank_pid(self.rank), signal.SIGKILL)


@pytest.mark.slow
def test_two_processes_train_survive_a_killed_rank_and_match_one_process(
    digits_file, tmp_path
) -> None:
    path, parts = digits_file
    train, val = _sources(path)
    single = ae_models.create_model("deep", seed=0, input_dim=64, code_size=8)
    ae_models.train(single, parts["train"], parts["val"], _config(strategy="single"))

    cfg = _config(checkpoint_dir=str(tmp_path / "ckpt"))
    first = ae_models.create_model("deep", seed=0, input_dim=64, code_size=8)
    killer = _KillRank(1, 3)
    started = time.monotonic()
    with pytest.raises(RankFailed) as failed:
        train_ddp(first, train, val, cfg, [killer], streaming=True)
    message = str(failed.value)
    assert "\n" not in message
    assert "rank 1" in message and "SIGKILL" in message, message
    # the callbacks learn of an epoch a moment after it ends: a fast rank may be further on
    done = int(re.search(r"resumes after epoch (\d+)$", message).group(1))
    assert 3 <= done < 8, message
    assert time.monotonic() - started < 60  # the other rank did not hang on its all-reduce
    assert killer.seen[:3] == [1, 2, 3]  # the epochs reached the caller's callbacks

    again = ae_models.create_model("deep", seed=0, input_dim=64, code_size=8)
    result = train_ddp(again, train, val, cfg, streaming=True)
    assert result.resumed_from == done
    assert [h["epoch"] for h in result.history] == list(range(1, 9))
    # both shards, counted once (the smaller shard starts over to keep step with the other)
    assert len(parts["train"]) <= result.history[0]["rows"] <= 1.1 * len(parts["train"])
    ddp_loss, single_loss = _test_loss(again, parts["test"]), _test_loss(single, parts["test"])
    assert ddp_loss == pytest.approx(single_loss, rel=LOSS_TOLERANCE)


def test_a_rank_that_fails_is_named_with_its_error(digits_file, tmp_path) -> None:
    path, _ = digits_file
    copy = tmp_path / "digits.parquet"
    copy.write_bytes(Path(path).read_bytes())
    train, val = _sources(str(copy))

    class _Rewrite:
        def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
            if epoch == 1:  # the source changes under streaming training
                with copy.open("ab") as f:
                    f.write(b"\0")

    model = ae_models.create_model("deep", seed=0, input_dim=64, code_size=8)
    with pytest.raises(RankFailed, match=r"rank \d \(pid \d+\) failed .*changed while training"):
        train_ddp(model, train, val, _config(epochs=30), [_Rewrite()], streaming=True)


@pytest.mark.slow
def test_a_rank_that_stops_answering_times_out_instead_of_hanging(digits_file, tmp_path) -> None:
    """SIGSTOP one process (a machine that froze): the other gives up on its all-reduce after
    ``collective_timeout`` seconds and the run ends, naming a process, instead of waiting
    forever."""
    train, val = _sources(digits_file[0])

    class _Freeze:
        def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
            if epoch == 1:
                os.kill(rank_pid(1), signal.SIGSTOP)

    model = ae_models.create_model("deep", seed=0, input_dim=64, code_size=8)
    cfg = _config(epochs=200, collective_timeout=5, checkpoint_dir=str(tmp_path))
    started = time.monotonic()
    with pytest.raises(RankFailed, match=r"data-parallel training rank \d \(pid \d+\)"):
        train_ddp(model, train, val, cfg, [_Freeze()], streaming=False)
    assert time.monotonic() - started < 90  # 5 s of timeout, 10 s for the agent to stop it


def test_a_failing_callback_stops_the_ranks(digits_file, tmp_path) -> None:
    """A callback of the launching process that fails (its tracking server gone, say) stops
    the training processes too, rather than leaving them training for nobody."""
    train, val = _sources(digits_file[0])

    class _Broken:
        def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
            raise ConnectionError("the tracking server went away")

    model = ae_models.create_model("deep", seed=0, input_dim=64, code_size=8)
    started = time.monotonic()
    with pytest.raises(ConnectionError, match="went away"):
        train_ddp(model, train, val, _config(epochs=2000), [_Broken()], streaming=False)
    assert time.monotonic() - started < 60  # 2,000 epochs would take minutes
    with pytest.raises(LookupError):
        rank_pid(0)  # no training process is left


def test_cuda_where_there_is_none_fails_before_any_process_starts(digits_file, monkeypatch) -> None:
    """Counted, not timed: no rank is launched (a wall-clock bound flakes on a busy machine)."""
    import ae_models.training.distributed as distributed

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    launched: list[int] = []
    monkeypatch.setattr(distributed, "_launch", lambda cfg, n, *rest: launched.append(n))
    train, val = _sources(digits_file[0])
    model = ae_models.create_model("deep", seed=0, input_dim=64, code_size=8)
    with pytest.raises(ValueError, match="CUDA is not available"):
        train_ddp(model, train, val, _config(device="cuda"), streaming=False)
    assert launched == []


def test_arrays_in_this_process_cannot_train_data_parallel(digits_file) -> None:
    model = ae_models.create_model("deep", seed=0, input_dim=64, code_size=8)
    x = digits_file[1]["train"]
    with pytest.raises(TypeError, match="reads every rank's rows from a Parquet file"):
        train_ddp(model, x, None, _config())  # type: ignore[arg-type]
