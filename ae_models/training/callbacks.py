"""Ready-made training callbacks (anything with ``on_epoch_end`` works as one)."""

from __future__ import annotations

import sys
from typing import Any, TextIO

from ae_models.training.loop import TrainResult


class ProgressBar:
    """Training callback: a one-line progress bar on stderr (a line per epoch when not a TTY)."""

    def __init__(self, width: int = 30, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.width = width
        self.tty = self.stream.isatty()
        self.epochs = 0

    def on_train_begin(self, info: dict[str, Any]) -> None:
        self.epochs = int(info["epochs"])

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        done = int(self.width * epoch / max(self.epochs, 1))
        bar = "#" * done + "-" * (self.width - done)
        line = (
            f"[{bar}] epoch {epoch}/{self.epochs} train {logs['train_loss']:.5f} "
            f"val {logs['val_loss']:.5f} {logs['seconds']:.1f}s"
        )
        self.stream.write(f"\r{line}" if self.tty else f"{line}\n")
        self.stream.flush()

    def on_train_end(self, result: TrainResult) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()
