"""CSV log of training losses, kept consistent with the checkpoint on resume; TensorBoard scalars."""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from ..atomic import storage_error, write_text_atomic
from .observers import Observer

if TYPE_CHECKING:  # pragma: no cover
    from .trainer import Trainer


class CsvLog:
    """Appends rows ``step, lr, <parts>``; on resume, rows after the checkpoint's step are dropped."""

    def __init__(self, path: Path, resume_step: int | None = None) -> None:
        self.path = path
        self.fields: list[str] | None = None
        if resume_step is not None and path.exists():
            with open(path, newline="") as fh:
                rows = list(csv.DictReader(fh))
            try:
                keep = [r for r in rows if int(r["step"]) <= resume_step]
            except (KeyError, TypeError, ValueError):  # no header or a garbled row: keep it aside, start anew
                path.replace(path.with_name(f"{path.name}.unreadable-{time.strftime('%Y%m%d-%H%M%S')}"))
                rows = keep = []
            if rows:
                self.fields = list(rows[0].keys())
                buffer = io.StringIO()
                writer = csv.DictWriter(buffer, fieldnames=self.fields)
                writer.writeheader()
                writer.writerows(keep)
                write_text_atomic(path, buffer.getvalue())  # a kill here keeps the old log
        elif path.exists():
            try:
                path.unlink()
            except OSError as exc:
                raise storage_error(path, exc, "cannot replace the log") from None

    def write(self, row: dict[str, float | int]) -> None:
        """Append one row (the header first); a full or read-only disk is a one-line StorageError."""
        new = self.fields is None
        if new:
            self.fields = list(row.keys())
        try:
            with open(self.path, "a", newline="") as fh:
                writer = csv.DictWriter(fh, fieldnames=self.fields, extrasaction="ignore")
                if new:
                    writer.writeheader()
                writer.writerow(row)
        except OSError as exc:
            raise storage_error(self.path, exc) from None


class TensorBoardLog:
    """The same rows as scalars for TensorBoard, when the tensorboard package is installed."""

    def __init__(self, writer: object) -> None:
        self.writer = writer

    @classmethod
    def open(cls, log_dir: Path) -> TensorBoardLog | None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is optional
            return None
        return cls(SummaryWriter(log_dir=str(log_dir)))

    def write(self, row: dict[str, float | int]) -> None:
        step = int(row["step"])
        for key, value in row.items():
            if key != "step":
                self.writer.add_scalar(key, float(value), step)  # type: ignore[attr-defined]

    def close(self) -> None:
        self.writer.close()  # type: ignore[attr-defined]


class CsvLogger(Observer):
    """Every log row into ``RUN/train_log.csv`` (rank 0); a resumed run first drops the rows after its checkpoint.

    Args:
        filename: the file in the run folder.
    """

    name = "csv"

    def __init__(self, filename: str = "train_log.csv") -> None:
        self.filename = filename
        self.log: CsvLog | None = None

    def on_fit_start(self, trainer: Trainer) -> None:
        if trainer.dist.is_main:
            self.log = CsvLog(trainer.run_dir / self.filename,
                              resume_step=trainer.log_resume_step)

    def on_log(self, trainer: Trainer, row: Mapping[str, float]) -> None:
        if self.log is not None:
            self.log.write(dict(row))


class TensorBoardLogger(Observer):
    """Every log row as TensorBoard scalars in ``RUN/tensorboard`` (rank 0, when tensorboard is installed)."""

    name = "tensorboard"

    def __init__(self) -> None:
        self.board: TensorBoardLog | None = None

    def on_fit_start(self, trainer: Trainer) -> None:
        if trainer.dist.is_main:
            self.board = TensorBoardLog.open(trainer.run_dir / "tensorboard")

    def on_log(self, trainer: Trainer, row: Mapping[str, float]) -> None:
        if self.board is not None:
            self.board.write(dict(row))

    def on_fit_end(self, trainer: Trainer, error: BaseException | None) -> None:
        if self.board is not None:
            self.board.close()
            self.board = None
