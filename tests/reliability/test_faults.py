"""Crashes and faults, for real: processes killed with SIGKILL mid-work, a tracking server
that is down, store folders that cannot be written. docs/reliability.md lists each case."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))


TRAIN_CHILD = """
import json, sys, time
import numpy as np, torch
from sklearn.datasets import load_digits
import ae_models

ckpt, out = sys.argv[1], sys.argv[2]
torch.set_num_threads(1)
x = load_digits().data.astype(np.float32) / 16.0


class Slow:  # a few tenths of a second an epoch, so the kill lands mid-training
    def on_epoch_end(self, epoch, logs):
        time.sleep(0.3)


model = ae_models.create_model("deep", seed=1, input_dim=64, code_size=8)
cfg = ae_models.TrainConfig(
    epochs=12, batch_size=64, patience=0, seed=3, checkpoint_dir=ckpt or None
)
result = ae_models.train(model, x[:1400], x[1400:], cfg, callbacks=[Slow()])
_, mse, _ = ae_models.encode_and_score(model, x[1400:])
json.dump(
    {"val_loss": result.history[-1]["val_loss"], "mse": float(mse.mean()),
     "resumed_from": result.resumed_from, "epochs": len(result.history)},
    open(out, "w"),
)
"""


def _child(code: str, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-c", code, *args], cwd=ROOT, env=env)


def _wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _checkpoint_epoch(path: Path) -> int:
    import torch

    try:  # replaced atomically: a reader sees the old file or the new one
        return int(torch.load(path, map_location="cpu", weights_only=True)["epoch"])
    except (FileNotFoundError, EOFError, RuntimeError):
        return 0


@pytest.mark.slow
def test_kill_9_during_training_resumes_to_the_same_result(tmp_path) -> None:
    """SIGKILL after a few epochs; the next run resumes from the last checkpoint and ends
    with the metrics of a run never interrupted (tolerance 1e-6; on the CPU they are equal)."""
    straight = _child(TRAIN_CHILD, "", str(tmp_path / "straight.json"))
    assert straight.wait(timeout=300) == 0
    ckpt = tmp_path / "ckpt"
    victim = _child(TRAIN_CHILD, str(ckpt), str(tmp_path / "killed.json"))
    _wait_for(lambda: _checkpoint_epoch(ckpt / "checkpoint.pt") >= 4, 300, "epoch 4")
    victim.send_signal(signal.SIGKILL)
    assert victim.wait(timeout=30) == -signal.SIGKILL
    assert not (tmp_path / "killed.json").exists()
    again = _child(TRAIN_CHILD, str(ckpt), str(tmp_path / "resumed.json"))
    assert again.wait(timeout=300) == 0
    expected = json.loads((tmp_path / "straight.json").read_text())
    resumed = json.loads((tmp_path / "resumed.json").read_text())
    assert 4 <= resumed["resumed_from"] < 12 and resumed["epochs"] == 12
    assert resumed["val_loss"] == pytest.approx(expected["val_loss"], rel=1e-6)
    assert resumed["mse"] == pytest.approx(expected["mse"], rel=1e-6)


WRITE_CHILD = """
import sys, time
sys.path.insert(0, "tests/feature_store")
from test_write import make_batch, write
from stores import resolve_stores
from feature_store import write as store

store.ROW_GROUP_BYTES, store.FILE_BYTES = 1000, 200_000  # data files appear as rows stream
home, mode = sys.argv[1], sys.argv[2]


def batches(slow):
    for i in range(40):
        yield make_batch(500, 3, 2, start=500 * i)
        if slow:
            time.sleep(0.5)


write(resolve_stores(home), batches(mode == "slow"), 3, 2)
"""


def test_kill_9_during_materialization_keeps_the_previous_snapshot(tmp_path) -> None:
    """SIGKILL while a version streams into the feature table: readers still see the last
    committed snapshot, complete; the re-run lands all rows once."""
    from feature_store import load_table, read_features

    sys.path.insert(0, str(ROOT / "tests" / "feature_store"))
    from test_write import make_batch, write

    from stores import resolve_stores

    st = resolve_stores(tmp_path / "home")
    write(st, make_batch(5, 3, 1), 3, 1)
    before = load_table("t", st).current_snapshot().snapshot_id
    warehouse = st.home / "warehouse"
    files_before = set(warehouse.rglob("*.parquet"))
    victim = _child(WRITE_CHILD, str(st.home), "slow")
    # the writer has started a data file of version 2: it is mid-stream
    _wait_for(lambda: set(warehouse.rglob("*.parquet")) - files_before, 120, "a data file")
    time.sleep(1.0)
    victim.send_signal(signal.SIGKILL)
    assert victim.wait(timeout=30) == -signal.SIGKILL
    assert load_table("t", st).current_snapshot().snapshot_id == before
    frame = load_table("t", st).scan().to_arrow()  # every row of every version
    assert frame.num_rows == 5 and set(frame.column("model_version").to_pylist()) == {1}
    again = _child(WRITE_CHILD, str(st.home), "fast")
    assert again.wait(timeout=300) == 0
    v2 = read_features("t", 2, home=st)
    assert len(v2) == 40 * 500 and v2["entity_id"].is_unique
    assert len(read_features("t", 1, home=st)) == 5


class _Unavailable:
    """A loopback HTTP server that answers every request 503 and counts them: a tracking
    server that is down behind its load balancer."""

    def __init__(self) -> None:
        import http.server
        import threading

        self.requests = 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self) -> None:
                outer.requests += 1
                self.send_response(503)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_GET = do_POST = _answer

            def log_message(self, *args) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_unreachable_tracking_server_fails_fast_and_hides_the_password(
    aepipe_cli, tmp_path
) -> None:
    """A tracking server that answers nothing but 503: exactly 1 + 3 attempts (the 3
    retries the message promises, counted at the server), then one line naming the server
    with its credentials blanked; nothing trained, registered or written to the table."""
    secret = "fake-s3cret-9f2e"
    server = _Unavailable()
    env = {"AEPIPE_TRACKING_URI": f"http://aepipe-user:{secret}@127.0.0.1:{server.port}"}
    try:
        t0 = time.monotonic()
        result = aepipe_cli("run", "--source", "digits", "--epochs", "1", cwd=tmp_path, env=env)
        assert time.monotonic() - t0 < 120
    finally:
        server.close()
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert (
        len(lines) == 1
        and f"MLflow tracking server http://***@127.0.0.1:{server.port}" in (lines[0])
    )
    assert "cannot be reached (3 retries)" in lines[0]
    assert server.requests == 1 + 3
    everything = result.stdout + result.stderr
    for path in (tmp_path).rglob("*"):
        if path.is_file() and path.stat().st_size < 5_000_000:
            everything += path.read_bytes().decode("utf-8", "replace")
    assert secret not in everything and "aepipe-user" not in everything
    assert not (tmp_path / ".aepipe" / "catalog.db").exists()
    assert not (tmp_path / ".aepipe" / "models").exists()


def test_an_unwritable_store_folder_is_named_before_any_work(aepipe_cli, tmp_path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the warehouse should go")
    env = {"AEPIPE_WAREHOUSE": str(blocker / "warehouse")}
    result = aepipe_cli("run", "--source", "digits", "--epochs", "1", cwd=tmp_path, env=env)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip() == (
        f"aepipe: error: cannot use {blocker / 'warehouse'} as the warehouse folder: "
        f"{blocker} is a file, not a folder"
    )
    assert not (tmp_path / ".aepipe" / "models").exists()


def test_a_memory_error_is_never_retried(prefect_server) -> None:
    """Issue 47.4: every MemoryError was retried twice by the I/O tasks' policy, holding the
    memory longer to meet the same input again. A transient failure still is retried."""
    from prefect import flow

    from tasks.runners import io_task

    calls: dict[str, int] = {}

    def failing(kind: type[BaseException]) -> None:
        calls[kind.__name__] = calls.get(kind.__name__, 0) + 1
        raise kind("planted")

    step = io_task("planted-failure")(failing).with_options(retry_delay_seconds=0)

    @flow
    def both() -> list:
        return [step(kind, return_state=True) for kind in (MemoryError, OSError)]

    states = both()
    assert all(s.is_failed() for s in states)
    assert calls == {"MemoryError": 1, "OSError": 3}


@pytest.mark.slow
def test_sigterm_ends_a_run_within_the_grace(tmp_path) -> None:
    """Issue 47.4: a run sent SIGTERM in training marked its task crashed and went on
    training in its worker thread: the process outlived the signal by minutes. Now the
    training loop stops at its next batch and the command ends with one line; the process
    is gone within the 20 s hard limit. (A new user's run: its own
    temporary Prefect server, which the signal stops too.)"""
    from tests.conftest import AEPIPE

    env = {k: v for k, v in os.environ.items() if not k.startswith(("AEPIPE_", "PREFECT_"))}
    log = tmp_path / "run.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [AEPIPE, "run", "--home", str(tmp_path / "home"), "--set", "train.epochs=5000",
             "--set", "train.patience=0"],
            cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 120
            while "epoch 10/5000" not in log.read_text(errors="replace"):
                assert proc.poll() is None, log.read_text()[-3000:]
                assert time.monotonic() < deadline, log.read_text()[-3000:]
                time.sleep(0.5)
            # to the process group, as systemd, a container stop or `kill -- -PGID` do: the
            # temporary Prefect server goes too, so the run cannot report its crash to it
            os.killpg(proc.pid, signal.SIGTERM)
            sent = time.monotonic()
            rc = proc.wait(timeout=45)
            took = time.monotonic() - sent
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    text = log.read_text(errors="replace")
    assert rc == 128 + signal.SIGTERM, text[-3000:]
    assert "aepipe: stopping on SIGTERM" in text
    assert took < 30, f"{took:.1f} s"
    assert "epoch 200/5000" not in text


def test_a_partition_that_returns_no_part_is_named(prefect_server, tmp_path, monkeypatch) -> None:
    """A partition task that gave back something other than its part or its exception (a
    result lost in storage, say) fails the ingest naming it, with the work folder removed;
    before, `next()` found no exception and raised a bare StopIteration."""
    import flows.ingest
    from stores import resolve_stores
    from tasks.config import build_config

    monkeypatch.setattr(flows.ingest, "map_with_progress", lambda *a, **k: [None])
    cfg = build_config({"home": str(tmp_path / "home"), "source": {"path": "digits"}})
    with pytest.raises(RuntimeError, match=r"1 ingest partition\(s\) of 1 returned no result"):
        flows.ingest.ingest_partitions(cfg, resolve_stores(cfg.home))
