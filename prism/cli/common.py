"""What every prism command shares: one-line errors for user mistakes, consoles, tables."""

from __future__ import annotations

import sys
from collections.abc import Callable

from rich.console import Console
from rich.table import Table

from ..errors import PrismError
from ..evaluation.report import EvalReport


def run_command(prog: str, body: Callable[[], int | None]) -> int:
    """Run ``body``; a PrismError is printed as ``prog: error: message`` with exit code 2, no traceback."""
    try:
        return int(body() or 0)
    except PrismError as exc:
        msg = " ".join(str(exc).split())
        print(f"{prog}: error: {msg}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130


def stdout_console() -> Console:
    return Console(highlight=False)


def report_table(report: EvalReport, title: str) -> Table:
    mean = report.mean_dice() * 100
    table = Table(title=title)
    table.add_column("#", justify="right")
    table.add_column("Modalities")
    for r in report.regions:
        table.add_column(f"{r} Dice", justify="right")
    for i, name in enumerate(report.combinations):
        table.add_row(str(i), name, *(f"{v:.2f}" for v in mean[i]))
    table.add_section()
    table.add_row("", "Mean", *(f"{v:.2f}" for v in mean.mean(0)))
    return table
