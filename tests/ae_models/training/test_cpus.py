"""Compute threads within the CPUs a process may use, shared between loops at once (issue
22.1): the affinity mask and a container's quota cap them; loops running at once split
them; a killed holder's share stops counting."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch

from ae_models.training.cpus import CpuShare, _cgroup_quota, usable_cpus


def test_affinity_caps_the_usable_cpus() -> None:
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs 2 CPUs to pin a process to one")
    code = (
        "import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))});"
        "from ae_models.training.cpus import usable_cpus; print(usable_cpus())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "1"
    assert usable_cpus() <= len(os.sched_getaffinity(0))


def test_cgroup_quotas_v2_and_v1(tmp_path) -> None:
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert _cgroup_quota(tmp_path) == 1.5
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert _cgroup_quota(tmp_path) is None
    (tmp_path / "cpu.max").unlink()
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("200000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert _cgroup_quota(tmp_path) == 2.0
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert _cgroup_quota(tmp_path) is None


def test_loops_at_once_split_the_cpus_and_take_them_back(tmp_path, monkeypatch) -> None:
    """On a machine of 8 usable CPUs with torch at 8 threads, whatever this one has (under
    xdist torch starts with one thread, and 1 // 2 would be 1 either way): one loop takes
    8, two take 4 each, and the survivor gets 8 back."""
    import ae_models.training.cpus as cpus

    monkeypatch.setattr(cpus, "usable_cpus", lambda: 8)
    before = torch.get_num_threads()
    torch.set_num_threads(8)
    try:
        with CpuShare(tmp_path) as first:
            assert first.threads == 8 and torch.get_num_threads() == 8
            entered, leave = threading.Event(), threading.Event()

            def other() -> None:
                with CpuShare(tmp_path) as second:
                    assert second.live() == 2
                    entered.set()
                    leave.wait(30)

            thread = threading.Thread(target=other)
            thread.start()
            assert entered.wait(30)
            assert first.live() == 2
            assert first.rebalance() == 4 and torch.get_num_threads() == 4
            with CpuShare(tmp_path) as nested:  # inside this loop (validation): no new share
                assert nested.slot is None and first.live() == 2
            leave.set()
            thread.join(30)
            assert first.live() == 1 and first.rebalance() == 8
        assert torch.get_num_threads() == 8  # the threads torch had before the loops
        assert list(tmp_path.glob("*.slot")) == []
    finally:
        torch.set_num_threads(before)


def test_a_killed_holders_share_stops_counting(tmp_path) -> None:
    code = (
        "import sys, time; from pathlib import Path; from ae_models.training.cpus import CpuShare\n"
        f"with CpuShare(Path({str(tmp_path)!r})):\n"
        "    print('held', flush=True); time.sleep(60)\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with CpuShare(tmp_path) as mine:
            assert mine.live() == 2
            holder.send_signal(signal.SIGKILL)
            holder.wait(30)
            deadline = time.monotonic() + 10
            while mine.live() != 1 and time.monotonic() < deadline:
                time.sleep(0.1)
            assert mine.live() == 1
            assert [p.name for p in tmp_path.glob("*.slot")] == [mine.slot.name]
    finally:
        holder.kill()


def test_arrow_pool_is_capped_at_a_cpu_quota(monkeypatch, tmp_path) -> None:
    """Issue 22.1: Arrow sizes its pool to the affinity mask, not to a container's CPU
    quota; the first compute loop caps it at the usable CPUs."""
    import pyarrow as pa

    import ae_models.training.cpus as cpus

    before = pa.cpu_count()
    monkeypatch.setattr(cpus, "_cgroup_quota", lambda: 1.0)  # a `--cpus 1` container
    try:
        assert cpus.usable_cpus() == 1
        with CpuShare(tmp_path):
            assert pa.cpu_count() == 1
    finally:
        pa.set_cpu_count(before)
