"""How an ``aepipe`` command stops on SIGTERM (a scheduler, ``kill``, a container stop).

Training loops stop at their next batch (:data:`ae_models.training.loop.STOP`), the command ends
with one line, and the process ends within :data:`SIGTERM_GRACE_S` whatever still runs.
Checkpoints stay: the next run with the same settings resumes from them.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

SIGTERM_GRACE_S = 20.0  # after SIGTERM, the process ends within this, whatever still runs


def _on_sigterm(signum: int, frame: Any) -> None:
    """SIGTERM (a scheduler, ``kill``, a container stop): stop training loops at their next
    batch, end the command, and end the process after :data:`SIGTERM_GRACE_S` at most,
    whatever thread is still busy. Checkpoints stay; the next run resumes from them."""
    _stop_work(signum)
    raise SystemExit(128 + signum)


_stopping = threading.Lock()


def _stop_work(signum: int) -> None:
    """Set training loops to stop at their next batch and end the process after
    :data:`SIGTERM_GRACE_S` whatever still runs (a thread busy in native code, a crash
    report retrying a server that is gone). Once per process."""
    from ae_models.training.loop import STOP

    if not _stopping.acquire(blocking=False):
        return
    STOP.set()
    print("aepipe: stopping on SIGTERM", file=sys.stderr, flush=True)
    deadline = threading.Timer(SIGTERM_GRACE_S, os._exit, args=(128 + signum,))
    deadline.daemon = True
    deadline.start()


def by_termination(err: BaseException) -> bool:
    """Whether ``err`` is, or arose while handling, Prefect's TerminationSignal (its own
    SIGTERM handler raises it while a flow runs; a crash report that then fails, say to a
    temporary server already stopping, raises something else from it)."""
    exceptions = sys.modules.get("prefect.exceptions")  # not imported: no flow ran
    if exceptions is None:
        return False
    termination = exceptions.TerminationSignal
    seen: BaseException | None = err
    for _ in range(20):
        if seen is None:
            return False
        if isinstance(seen, termination):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


@contextmanager
def stop_on_sigterm() -> Iterator[None]:
    """While inside, SIGTERM stops the work (see the module's text); the handler and the
    wakeup descriptor are restored after. Elsewhere than the main thread, nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    end = _watch_for_sigterm()
    try:
        yield
    finally:
        if end is not None:
            end()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _watch_for_sigterm() -> Callable[[], None] | None:
    """Stop the work on SIGTERM whichever Python handler takes it: while a flow runs,
    Prefect's own handler replaces aepipe's and first reports the crash to its server,
    retrying for a minute when that server went with the signal (a process-group SIGTERM
    stops the temporary server too). The interpreter writes every signal's number to the
    wakeup descriptor; a daemon thread reads it and calls :func:`_stop_work` at once.
    Returns what ends the watch (the descriptor set before restored)."""
    import socket

    reader, writer = socket.socketpair()
    writer.setblocking(False)
    try:
        before = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
    except ValueError:  # not the main thread of the main interpreter
        reader.close()
        writer.close()
        return None

    def watch() -> None:
        with reader:
            while data := reader.recv(64):
                if signal.SIGTERM in data:
                    _stop_work(signal.SIGTERM)

    def end() -> None:
        signal.set_wakeup_fd(before)
        writer.close()  # the reader sees the end and the thread returns

    threading.Thread(target=watch, name="aepipe-sigterm", daemon=True).start()
    return end
