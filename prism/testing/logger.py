"""``check_logger``: the Logger contract, checked on any registered logger (experiment tracker)."""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..logger import Logger, LoggerRun
from ..registry import get_registry
from ..seams import check_state_round_trip
from ._report import Checks, ConformanceReport, expect, registered

#: the checks of :func:`check_logger`, in the order they run
LOGGER_CHECKS = ("builds", "logs_a_run", "files_stay_in_the_run_folder", "state_round_trip", "resumes")

#: a config as plain data, as ``LoggerRun.config`` holds it (nested sections, lists, None, numbers, text)
SAMPLE_CONFIG: dict[str, Any] = {
    "data": {"cache": None, "patch_size": [16, 16, 16], "batch_size": 2},
    "model": {"name": "multi_unet", "options": {"width": 4}, "init_from": None},
    "losses": [{"name": "fuse", "weight": 1.0, "options": {}}],
    "optim": {"name": "adamw", "lr": 0.003, "schedule": "poly"},
    "train": {"steps": 4, "loggers": [{"name": "csv", "options": {}}], "ema": None},
}


def _rows(step: int) -> list[tuple[str, dict[str, float]]]:
    """What the trainer logs at ``step``: a train row (dotted part names among them) and a validation."""
    train = {"step": float(step), "lr": 0.003 / step, "loss": 1.0 / step, "fuse": 0.5 / step,
             "meta.fuse": 0.25 / step, "samples_per_s": 10.0}
    return [("train", train), ("val", {"val_dice": 0.1 * step, "best_val_dice": 0.1 * step})]


@contextlib.contextmanager
def _working_directory(path: Path) -> Iterator[None]:
    before = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


class _LoggerSuite:
    def __init__(self, name: str, options: Mapping[str, Any], folder: Path) -> None:
        self.name, self.options, self.folder = name, dict(options), folder
        self.owner = get_registry().get("logger", name)

    def logger(self) -> Any:
        return get_registry().build("logger", self.name, (), self.options)

    def play(self, logger: Logger, run_dir: Path, *, steps: Iterable[int] = (2, 4), resumed_from: int | None = None,
             finish: str = "completed") -> None:
        """The calls a run makes, in the trainer's order."""
        logger.start(LoggerRun(run_dir=run_dir, name=run_dir.name, config=SAMPLE_CONFIG, resumed_from=resumed_from))
        last = 0
        for step in steps:
            for group, values in _rows(step):
                logger.log_scalars(group, values, step)
            last = step
        logger.log_scalars("val", {"val_dice": math.nan, "best_val_dice": 0.4}, last)  # no case scored: NaN
        logger.flush()
        image = np.zeros((24, 40, 3), dtype=np.uint8)
        image[:, :20, 0] = 255
        report = run_dir / "eval.json"
        report.write_text(json.dumps({"mean": {"dice": {"WT": 0.5}}}) + "\n")
        (run_dir / "eval.md").write_text("| combination | WT |\n|---|---|\n| all | 0.5 |\n")
        logger.log_image("eval_dice", image, last)
        logger.log_report({"dice/WT": 0.5, "dice/mean": 0.5, "hd95/WT": math.nan},
                          [report, run_dir / "eval.md"])
        logger.finish(finish)

    # ---- the checks -------------------------------------------------------------------------------------------
    def builds(self) -> Any:
        logger = self.logger()
        expect(isinstance(logger, Logger), f"built {type(logger).__name__}, which is not a prism.logger.Logger "
                                           "(subclass it)")
        return logger

    def logs_a_run(self, logger: Logger) -> None:
        run_dir = self.folder / "run"
        run_dir.mkdir()
        self.play(logger, run_dir)

    def files_stay_in_the_run_folder(self) -> None:
        work, run_dir = self.folder / "cwd", self.folder / "contained" / "run"
        work.mkdir()
        run_dir.mkdir(parents=True)
        with _working_directory(work):
            self.play(self.logger(), run_dir)
        strays = sorted(p.name for p in work.iterdir())
        expect(not strays, f"wrote {strays} into the working directory; keep every file under LoggerRun.run_dir")
        beside = sorted(p.name for p in run_dir.parent.iterdir() if p != run_dir)
        expect(not beside, f"wrote {beside} beside the run folder; keep every file under LoggerRun.run_dir")

    def state_round_trip(self, logger: Logger) -> None:
        check_state_round_trip(logger, self.logger(), self.owner)

    def resumes(self, logger: Logger) -> None:
        """A run stopped at step 4 (by a signal) and resumed from its checkpoint at step 2."""
        run_dir = self.folder / "resumed"
        run_dir.mkdir()
        first = self.logger()
        self.play(first, run_dir, steps=(2, 4), finish="stopped")
        second = self.logger()
        check_state_round_trip(first, second, self.owner)
        self.play(second, run_dir, steps=(4, 6), resumed_from=2)


def check_logger(plugin: str | Callable[..., Any], *, options: Mapping[str, Any] | None = None,
                 skip: Iterable[str] = (), raise_on_failure: bool = True) -> ConformanceReport:
    """Run prism's logger suite (``LOGGER_CHECKS``) on a logger, every check whatever the others gave.

    The checks: it builds a :class:`prism.logger.Logger`; it takes the calls of a run in the trainer's order
    (``start``, train and validation scalars, a NaN score, dotted names such as ``meta.fuse``, ``flush``, an
    image, the evaluation's summary and files, ``finish``); it writes nothing into the working directory or
    beside the run folder; its ``state_dict`` survives a weights-only checkpoint and a fresh logger restored from
    it reports the same state; and a run stopped by a signal and resumed from an earlier checkpoint (the same run
    folder, ``resumed_from`` set) logs on.

    Args:
        plugin: a registered logger name, or its factory (registered in this process for the check).
        options: the logger's options (those that keep it offline, e.g. ``{"mode": "offline"}``).
        skip: names of checks to leave out (reported as skipped).
        raise_on_failure: raise :class:`ConformanceError` listing every failed check (else return the report).

    Returns:
        The :class:`ConformanceReport`.

    Raises:
        ConformanceError: a check failed (every failure named in one message).
    """
    with registered("logger", plugin) as (name, subject), tempfile.TemporaryDirectory(prefix="prism-logger-") as tmp:
        checks = Checks(subject, LOGGER_CHECKS, skip)
        suite = _LoggerSuite(name, options or {}, Path(tmp))
        logger = checks.run("builds", suite.builds)
        if logger is None:
            checks.not_run("the logger did not build")
            return checks.finish(raise_on_failure)
        checks.run("logs_a_run", suite.logs_a_run, logger)
        checks.run("files_stay_in_the_run_folder", suite.files_stay_in_the_run_folder)
        checks.run("state_round_trip", suite.state_round_trip, logger)
        checks.run("resumes", suite.resumes, logger)
        return checks.finish(raise_on_failure)
