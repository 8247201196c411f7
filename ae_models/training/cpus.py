"""CPU threads shared fairly: compute never takes more threads than the CPUs this process
may use, and compute loops running at once on one machine split those CPUs between them.

PyTorch sizes its intra-op thread pool to the machine's cores, whatever the process's CPU
affinity or its container's CPU quota, and its OpenMP threads wait on each other when two
processes each take every core: two 3-epoch fits on 20,000 MNIST rows took 30 s each at
once on 2 cores, against 5.3 s alone (1 thread each: 6.6 s at once). So each training loop
and each scoring partition holds a :class:`CpuShare`, a slot file in a folder of the
machine's temp directory, locked while it lives (the lock dies with its process, so a
killed run's slot stops counting); on entry it counts the live slots and sets torch's
threads to ``usable_cpus() // live`` (at least 1, never more than
the process started with: ``OMP_NUM_THREADS`` still caps it), and again every quarter
second while it runs (:meth:`CpuShare.tick`, per batch). Arrow's compute pool, which also
sizes itself to the affinity but not to a quota, is capped once (:func:`cap_arrow_threads`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SLOTS = Path(tempfile.gettempdir()) / "aepipe-cpu-slots"
REBALANCE_SECONDS = 0.25  # how often a running loop looks for loops started or ended
_held = threading.local()  # the share this thread holds: a loop inside a loop takes none
_lock = threading.Lock()
_active = 0  # shares held in this process
_base_threads = 0  # torch's threads before the first of them: the cap, restored after the last


def _cgroup_quota(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """CPUs allowed by the cgroup (v2 ``cpu.max``, v1 ``cpu.cfs_quota_us``), None when
    unlimited or unknown."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return quota_us / period_us if quota_us > 0 and period_us > 0 else None
    except (OSError, ValueError):
        return None


def usable_cpus() -> int:
    """CPUs this process may run on: its affinity mask, capped by a cgroup CPU quota (a
    container's ``--cpus``), at least 1."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        n = os.cpu_count() or 1
    quota = _cgroup_quota()
    if quota is not None:
        n = min(n, int(quota))
    return max(1, n)


def cap_arrow_threads() -> int:
    """Cap Arrow's CPU pool (Parquet decoding, compute kernels) at :func:`usable_cpus`: Arrow
    sizes it to the affinity mask but not to a container's CPU quota. Returns its size."""
    import pyarrow as pa

    usable = usable_cpus()
    if pa.cpu_count() > usable:
        pa.set_cpu_count(usable)
    return pa.cpu_count()


class CpuShare:
    """A share of the machine's usable CPUs for one compute loop, as a context manager;
    :meth:`rebalance` (called on entry, then through :meth:`tick` per batch) sets torch's
    threads to this loop's share. Without file locks (Windows) it only caps at
    :func:`usable_cpus`."""

    def __init__(self, folder: Path | None = None) -> None:
        self.folder = folder or SLOTS
        self.slot: Path | None = None
        self._handle: Any = None
        self._usable = 1
        self._checked = 0.0
        self._outer: CpuShare | None = None
        self.threads = 0

    def __enter__(self) -> CpuShare:
        import torch

        self._outer = getattr(_held, "share", None)
        if self._outer is not None:  # validation inside training: the training's share
            return self
        global _active, _base_threads
        _held.share = self
        with _lock:
            if _active == 0:
                _base_threads = torch.get_num_threads()
                cap_arrow_threads()
            _active += 1
        self._usable = usable_cpus()  # fixed for the process: read once, not per rebalance
        with contextlib.suppress(OSError, ImportError):
            import fcntl

            self.folder.mkdir(parents=True, exist_ok=True)
            pending = self.folder / f"{os.getpid()}-{uuid.uuid4().hex[:8]}.pending"
            handle = pending.open("wb")
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)  # held until close or process death
            slot = pending.with_suffix(".slot")
            pending.rename(slot)  # counted only once locked: never mistaken for a dead one
            self._handle, self.slot = handle, slot
        self.rebalance()
        return self

    def __exit__(self, *exc: object) -> None:
        import torch

        if self._outer is not None:
            return
        _held.share = None
        if self._handle is not None:
            self._handle.close()
            with contextlib.suppress(OSError):
                self.slot.unlink()  # type: ignore[union-attr]
            self._handle = self.slot = None
        global _active
        with _lock:
            _active -= 1
            if _active == 0 and torch.get_num_threads() != _base_threads:
                torch.set_num_threads(_base_threads)

    def live(self) -> int:
        """Slots held now on this machine (this one included); dead holders' slots are
        removed."""
        if self.slot is None:
            return 1
        import fcntl

        n = 0
        for path in self.folder.glob("*.slot"):
            if path == self.slot:
                n += 1
                continue
            try:
                with path.open("rb") as other:
                    fcntl.flock(other.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                path.unlink(missing_ok=True)  # its holder is gone
            except BlockingIOError:
                n += 1
            except OSError:
                continue
        return max(n, 1)

    def tick(self) -> None:
        """:meth:`rebalance` when the last one is a quarter second old (call per batch)."""
        if self._outer is not None:
            return self._outer.tick()
        now = time.monotonic()
        if now - self._checked >= REBALANCE_SECONDS:
            self.rebalance()

    def rebalance(self) -> int:
        """Set torch's threads to this loop's share of the usable CPUs; the share."""
        import torch

        self._checked = time.monotonic()
        share = max(1, min(_base_threads, self._usable // self.live()))
        if share != self.threads:
            if torch.get_num_threads() != share:
                torch.set_num_threads(share)
            if self.threads:
                log.info("CPU threads %d -> %d (loops sharing the machine)", self.threads, share)
            self.threads = share
        return share
