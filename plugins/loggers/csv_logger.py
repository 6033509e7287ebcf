"""CSV files in the run folder: one per scalar group (``train_log.csv``, ``val_log.csv``)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from prism.logger import SCALAR_GROUPS, CsvLog, Logger, LoggerRun


class CsvLogger(Logger):
    """CSV files in the run folder: ``train_log.csv`` (the log rows) and ``val_log.csv`` (validation scores).

    Each row starts with ``step``. A resumed run first drops the rows written after its checkpoint, so the files
    hold the rows of a run that was never stopped. ``prism-study`` reads ``train_log.csv`` for its loss curves and
    divergence checks. Images and the evaluation are in the run folder already (``eval_dice.png``, ``eval.json``).
    """

    def __init__(self) -> None:
        self.folder: Path | None = None
        self.resumed_from: int | None = None
        self.logs: dict[str, CsvLog] = {}

    def start(self, run: LoggerRun) -> None:
        self.folder, self.resumed_from, self.logs = run.run_dir, run.resumed_from, {}
        for group in SCALAR_GROUPS:  # trim (resume) or replace (new run) every file this logger writes
            self._log(group)

    def _log(self, group: str) -> CsvLog:
        if group not in self.logs:
            assert self.folder is not None, "start() first"
            self.logs[group] = CsvLog(self.folder / f"{group}_log.csv", resume_step=self.resumed_from)
        return self.logs[group]

    def log_scalars(self, group: str, values: Mapping[str, float], step: int) -> None:
        self._log(group).write({"step": step, **{k: v for k, v in values.items() if k != "step"}})
