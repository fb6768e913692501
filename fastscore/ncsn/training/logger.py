"""The run's log: log.csv, and TensorBoard when it is installed."""
from __future__ import annotations

import csv
import os


class Logger:
    """Appends rows to <workdir>/log.csv and, when tensorboard is installed, to TensorBoard."""

    COLUMNS = ("step", "loss", "lr", "it_per_s", "elapsed_s")

    def __init__(self, workdir: str, tensorboard: bool = True):
        self.path = os.path.join(workdir, "log.csv")
        new = not os.path.exists(self.path)
        self._file = open(self.path, "a", newline="")
        self._csv = csv.writer(self._file)
        if new:
            self._csv.writerow(self.COLUMNS)
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self._tb = SummaryWriter(os.path.join(workdir, "tb"))
            except ImportError:  # tensorboard not installed: CSV only
                self._tb = None

    def log(self, step: int, loss: float, lr: float, it_per_s: float, elapsed: float) -> None:
        self._csv.writerow([step, f"{loss:.6g}", f"{lr:.6g}", f"{it_per_s:.4g}", f"{elapsed:.2f}"])
        self._file.flush()
        if self._tb is not None:
            self._tb.add_scalar("loss", loss, step)
            self._tb.add_scalar("it_per_s", it_per_s, step)

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()
