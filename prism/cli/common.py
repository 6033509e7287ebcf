"""What every prism command shares: one-line errors for user mistakes, consoles, tables."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import NoReturn

import numpy as np
from rich import box
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from ..atomic import unsafe_to_finalize
from ..errors import PluginBug, PrismError
from ..evaluation.report import EvalReport
from ..evaluation.results import mean_over_combinations


class OneLineParser(argparse.ArgumentParser):
    """argparse with one-line errors (``prog: error: message``, exit 2) like every other prism error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class ConsoleHandler(logging.Handler):
    """prism's log records as plain lines on the terminal (the library itself prints nothing): information (the
    training progress, notices) on standard output, ``prog: warning: ...`` on standard error.

    Args:
        prog: the command's name, heading warnings.
    """

    def __init__(self, prog: str) -> None:
        super().__init__(logging.INFO)
        self.prog = prog
        self.out = stdout_console()
        self.err = Console(stderr=True, highlight=False, soft_wrap=True)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = self.format(record)
            if record.levelno >= logging.WARNING:
                self.err.print(f"{self.prog}: warning: {message}", markup=False, highlight=False)
            else:
                self.out.print(message, markup=False, highlight=False)
        except Exception:  # pragma: no cover - as logging.Handler.emit does
            self.handleError(record)


@contextmanager
def library_logging(prog: str) -> Iterator[ConsoleHandler]:
    """Show the ``prism`` loggers' records (INFO and above) on the terminal while a command runs."""
    logger = logging.getLogger("prism")
    handler = ConsoleHandler(prog)
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def run_command(prog: str, body: Callable[[], int | None]) -> int:
    """Run ``body``; a PrismError is printed as ``prog: error: message`` with exit code 2, no traceback. The
    library's log records are shown while it runs (:func:`library_logging`)."""
    try:
        with library_logging(prog):
            return int(body() or 0)
    except PrismError as exc:
        msg = " ".join(str(exc).split())
        print(f"{prog}: error: {msg}", file=sys.stderr)
        if unsafe_to_finalize():  # e.g. HDF5 after a failed write: a normal interpreter shutdown would crash
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(exc.exit_code)
        return exc.exit_code
    except PluginBug as exc:  # not the user's mistake: keep the plugin's traceback, headed by its name
        print(f"{prog}: error: {exc}; its traceback follows", file=sys.stderr)
        cause = exc.__cause__ or exc
        traceback.print_exception(type(cause), cause, cause.__traceback__, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # raised outside a blamed call (evaluation, prediction): name a plugin if it is one's
        from ..registry import describe, get_registry

        entry = get_registry().culprit(exc)
        if entry is None:
            raise
        print(f"{prog}: error: {describe(entry)} from plugin '{entry.plugin}' raised {type(exc).__name__}; its "
              "traceback follows", file=sys.stderr)
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
        return 1


@contextmanager
def case_progress(console: Console, total: int, label: str = "evaluate") -> Iterator[Callable[[str], None]]:
    """A callback to call after each of ``total`` cases: a progress bar with ETA on a terminal, else one line per
    tenth of the cases (logs stay short)."""
    if console.is_terminal:
        with Progress(TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                      TextColumn("{task.description}"), console=console, transient=True) as bar:
            task = bar.add_task("", total=total)
            yield lambda case_id: bar.update(task, advance=1, description=case_id)
        return
    done = 0
    start = time.perf_counter()
    every = max(1, total // 10)

    def step(case_id: str) -> None:
        nonlocal done
        done += 1
        if done % every == 0 or done == total:
            left = (time.perf_counter() - start) / done * (total - done)
            console.print(f"{label}: {done}/{total} cases ({case_id})  ETA {int(left) // 60}:{int(left) % 60:02d}",
                          highlight=False)

    yield step


def stdout_console() -> Console:
    """The console for results. Piped or redirected output is not wrapped at 80 columns (lines stay whole for
    grep and logs); ``COLUMNS`` still sets the width when given."""
    width = None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 200
    return Console(highlight=False, width=width, soft_wrap=width is not None)


def report_table(report: EvalReport, title: str) -> Table:
    """The papers' layout: combinations as rows, Dice (%) and HD95 (mm) per region, and the mean row."""
    dice = report.mean_dice() * 100
    hd = report.mean_hd95()
    table = Table(title=title + (": Dice (%), HD95 (mm)" if hd is not None else ": Dice (%)"),
                  box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("#", justify="right", no_wrap=True)
    table.add_column("Modalities", no_wrap=True)
    for r in report.regions:
        table.add_column(r, justify="right", no_wrap=True)
    if hd is not None:
        for r in report.regions:
            table.add_column(f"{r} mm", justify="right", no_wrap=True)

    def cells(d: np.ndarray, h: np.ndarray | None) -> list[str]:
        out = [f"{v:.2f}" for v in d]
        return out + ([f"{v:.2f}" for v in h] if h is not None else [])

    for i, name in enumerate(report.combinations):
        table.add_row(str(i), name, *cells(dice[i], None if hd is None else hd[i]))
    table.add_section()
    table.add_row("", "Mean", *cells(mean_over_combinations(dice),
                                     None if hd is None else mean_over_combinations(hd)))
    return table
