"""Progress of a run: one line per log interval through :mod:`logging`, or a progress bar on a terminal.

The library prints nothing itself: :class:`ProgressLines` sends its lines to the ``prism.engine.progress`` logger
(silent unless the application configures logging; ``prism-train`` shows them), or to a rich console when given
one (the study runner's per-run log). :class:`ProgressBar` draws a bar on a terminal console instead.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from .observers import Observer

if TYPE_CHECKING:  # pragma: no cover
    from rich.console import Console

    from .trainer import Trainer

logger = logging.getLogger(__name__)


def rate_text(samples_per_s: float) -> str:
    """``12.3 samples/s``, or ``4.2 s/sample`` when slower than one a second (never ``0.0 samples/s``)."""
    if samples_per_s >= 1:
        return f"{samples_per_s:.1f} samples/s"
    return f"{1 / samples_per_s:.1f} s/sample" if samples_per_s > 0 else "- samples/s"


def eta_text(seconds: float) -> str:
    """``1:02:03`` (hours:minutes:seconds) of the time left."""
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def row_info(row: Mapping[str, float]) -> str:
    """``loss 0.1234  12.3 samples/s`` (and ``skipped N`` when steps were skipped)."""
    info = f"loss {row['loss']:.4f}  {rate_text(row['samples_per_s'])}" if "loss" in row \
        else rate_text(row["samples_per_s"])
    return info + (f"  skipped {int(row['skipped'])}" if row.get("skipped") else "")


class ProgressLines(Observer):
    """``step 50/200  loss 0.4321  3.2 samples/s  ETA 0:01:02`` per log row, and one line per validation.

    Args:
        emit: where a line goes; default: ``logging.getLogger("prism.engine.progress").info``.
    """

    name = "progress"

    def __init__(self, emit: Callable[[str], Any] | None = None) -> None:
        self.emit = emit or logger.info
        self._start = (0, 0.0)

    def on_fit_start(self, trainer: Trainer) -> None:
        self._start = (trainer.ctx.step, time.perf_counter())

    def on_log(self, trainer: Trainer, row: Mapping[str, float]) -> None:
        if not trainer.dist.is_main:
            return
        step, end = int(row["step"]), trainer.end_step
        done = max(step - self._start[0], 1)
        left = (time.perf_counter() - self._start[1]) / done * (end - step)
        self.emit(f"step {step}/{trainer.config.train.steps}  {row_info(row)}  ETA {eta_text(left)}")

    def on_validation(self, trainer: Trainer, score: float, best: float) -> None:
        self.emit(f"step {trainer.ctx.step}/{trainer.config.train.steps}  validation Dice {score:.4f}  "
                  f"best {best:.4f}")


class ProgressBar(Observer):
    """A rich progress bar on a terminal ``console``, with the last row's loss and speed; validation lines are
    printed above it."""

    name = "progress"

    def __init__(self, console: Console) -> None:
        self.console = console
        self._bar: Any = None
        self._task: Any = None

    def on_fit_start(self, trainer: Trainer) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        if not trainer.dist.is_main:
            return
        self._bar = Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                             TextColumn("{task.fields[info]}"), TimeRemainingColumn(), console=self.console,
                             transient=False)
        self._task = self._bar.add_task("train", total=trainer.config.train.steps, completed=trainer.ctx.step,
                                        info="")
        self._bar.start()

    def on_log(self, trainer: Trainer, row: Mapping[str, float]) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=int(row["step"]), info=row_info(row))

    def on_step_end(self, trainer: Trainer, parts: Mapping[str, Any]) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=trainer.ctx.step)

    def on_validation(self, trainer: Trainer, score: float, best: float) -> None:
        self.console.print(f"step {trainer.ctx.step}/{trainer.config.train.steps}  validation Dice {score:.4f}  "
                           f"best {best:.4f}", highlight=False)

    def on_fit_end(self, trainer: Trainer, error: BaseException | None) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


def progress_observer(console: Console | None) -> Observer:
    """A bar on a terminal ``console``; lines printed to a non-terminal ``console``; lines logged without one."""
    if console is None:
        return ProgressLines()
    if console.is_terminal:
        return ProgressBar(console)
    return ProgressLines(lambda line: console.print(line, highlight=False))
