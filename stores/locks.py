"""Locks that processes and threads sharing one aepipe home take turns with."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

from stores import Stores


@contextmanager
def home_lock(stores: Stores, name: str) -> Iterator[None]:
    """An exclusive lock named ``name``, for processes and threads sharing this home: a file
    under ``<home>/locks`` held with POSIX ``flock`` (where there is none, no lock)."""
    try:
        import fcntl
    except ImportError:  # Windows: runs on one home rarely overlap there
        yield
        return
    folder = stores.home / "locks"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', name)}.lock"
    with path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
