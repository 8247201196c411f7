"""Room on the disks of the local stores: a run checks that a store has the space a step
will write before the step starts, and a disk that fills anyway ends the step with one line
naming the store and the space it needed, not the operating system's ``[Errno 28]``.

The estimates are upper bounds of what a step writes (uncompressed sizes plus a margin for
metadata), so a check that passes leaves the write room; remote stores (S3, a tracking
server) are not checked.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote, urlsplit

# A step's own small files (Iceberg metadata and manifests, JSON, pictures) on top of its
# estimate; tmpfs and most filesystems also round every file up to a 4 KiB block.
SLACK_BYTES = 512 << 10

# the variable that moves each store to another disk, for the message
MOVE_HINT = {
    "data": "AEPIPE_HOME",
    "models": "AEPIPE_HOME",
    "MLflow artifacts": "AEPIPE_HOME or AEPIPE_TRACKING_URI",
    "warehouse": "AEPIPE_WAREHOUSE",
}


class StoreFull(OSError):
    """A local store lacks the space a step needs; the message names the store, the folder,
    the space needed and the space free."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.ENOSPC, message)

    def __str__(self) -> str:
        return str(self.args[1])


def human(n: float) -> str:
    """Bytes as a short size (``1.5 MB``)."""
    for unit in ("bytes", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def within(path: str | os.PathLike[str], root: str | os.PathLike[str]) -> bool:
    """Whether ``path`` lies under ``root`` with no symbolic link between them (links in
    ``root``'s own path are allowed): removing it removes nothing outside ``root``."""
    p, r = Path(os.path.abspath(path)), Path(os.path.abspath(root))
    try:
        rel = p.relative_to(r)
    except ValueError:
        return False
    return Path(os.path.realpath(p)) == Path(os.path.realpath(r)) / rel


def local_folder(uri_or_path: str | Path) -> Path | None:
    """The folder of a local store (a path or a ``file://`` URI); None for a remote one."""
    text = str(uri_or_path)
    if "://" not in text:
        return Path(text)
    if text.startswith("file://"):
        return Path(unquote(urlsplit(text).path))
    return None


def free_bytes(folder: Path) -> int:
    """Bytes free on the filesystem that holds ``folder`` (or would, once created)."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    return shutil.disk_usage(existing).free


def is_disk_full(err: BaseException) -> bool:
    """Whether ``err`` says a disk (or a quota) is full; Arrow's errors carry only the text."""
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(err)
    return "No space left on device" in text or "Disk quota exceeded" in text


def _message(store: str, folder: Path, what: str, needed: int, free: int) -> str:
    hint = MOVE_HINT.get(store, "AEPIPE_HOME")
    return (
        f"no room in the {store} store {folder}: {what} needs about {human(needed)}, "
        f"{human(free)} free; free some space there or set {hint} to a larger disk"
    )


def ensure_room(folder: Path | None, needed: int, store: str, what: str) -> None:
    """Raise :class:`StoreFull` unless ``folder``'s disk has ``needed`` bytes plus a margin
    free (nothing to check for a remote store, ``folder`` None, or for ``needed`` 0)."""
    if folder is None or needed <= 0:
        return
    needed += SLACK_BYTES
    free = free_bytes(folder)
    if free < needed:
        raise StoreFull(_message(store, folder, what, needed, free))


@contextlib.contextmanager
def room_for(folder: Path | None, needed: int, store: str, what: str) -> Iterator[None]:
    """:func:`ensure_room` now, and a disk that fills while the block writes (another job
    took the space) raised as :class:`StoreFull` with the same message."""
    ensure_room(folder, needed, store, what)
    try:
        yield
    except StoreFull:
        raise
    except OSError as err:
        if folder is None or not is_disk_full(err):
            raise
        raise StoreFull(
            _message(store, folder, what, needed + SLACK_BYTES, free_bytes(folder))
            + " (the disk filled during the write; nothing of it was kept)"
        ) from err
