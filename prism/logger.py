"""The Logger contract: an experiment tracker (CSV files, TensorBoard, MLflow, Weights & Biases, yours) that a
training run reports to.

A logger is a plugin like a backbone or a loss: a package registers its factory with the ``register_loggers``
hook, and a run chooses loggers by name in ``train.loggers`` (``[csv, tensorboard]`` by default; options as
``{name: mlflow, options: {experiment: brats}}``). The factory takes the options as keyword arguments and nothing
else. The trainer calls a logger on the main process only (rank 0 under torchrun), in this order::

    start(run)                              once per fit, before its first step (again in a resumed run)
    log_scalars("train", row, step)         every train.log_every steps: the log row (interval means)
    log_scalars("val", scores, step)        after each validation (train.val_every): val_dice, best_val_dice
    flush()                                 when a fit returns or raises
    log_image("eval_dice", image, step)     after the run's evaluation: its Dice heatmap, uint8 [H, W, 3]
    log_report(summary, files)              after the run's evaluation: headline metrics and the report's files
    finish(status)                          once, when the trainer closes: "completed", "stopped" or "failed"

Whatever ``state_dict()`` returns is saved in every checkpoint and handed back to ``load_state_dict()`` before
``start`` when the run resumes, so a resumed run can continue the same tracker run (an MLflow run id, say).
A minimal logger, writing one JSON line per row::

    import json
    from prism.logger import Logger, LoggerRun

    class JsonLines(Logger):
        def start(self, run: LoggerRun) -> None:
            self.path = run.run_dir / "scalars.jsonl"

        def log_scalars(self, group, values, step):
            with open(self.path, "a") as fh:
                fh.write(json.dumps({"group": group, "step": step, **values}) + "\\n")
"""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import storage_error, write_text_atomic

#: the scalar groups the trainer logs: "train" (the log rows) and "val" (validation scores)
SCALAR_GROUPS = ("train", "val")

#: how a run ended, as ``finish`` receives it
STATUSES = ("completed", "stopped", "failed")


@dataclass(frozen=True)
class LoggerRun:
    """What a logger is told about the run when it starts.

    Attributes:
        run_dir: the run folder (a logger keeps its files under it).
        name: the run's name (its folder's name).
        config: the resolved config as plain data (what ``config.yaml`` holds).
        resumed_from: the step a resumed run continues from (values a logger holds for later steps came from
            the run before it stopped and are not in its checkpoint: drop them where the tracker can); None for
            a run that starts at step 0.
    """

    run_dir: Path
    name: str
    config: Mapping[str, Any]
    resumed_from: int | None = None


class Logger:
    """Base class of loggers: override ``log_scalars`` and whichever other events the tracker takes (each is a
    no-op here). Raise :class:`prism.errors.ConfigError` for a user mistake (a missing package, a bad option);
    anything else a logger raises is reported as a bug in its plugin."""

    def start(self, run: LoggerRun) -> None:
        """Open the tracker's run (files under ``run.run_dir``, the config as its parameters)."""

    def log_scalars(self, group: str, values: Mapping[str, float], step: int) -> None:
        """Record named numbers at optimisation step ``step``.

        Args:
            group: ``"train"`` (``step``, ``lr``, the mean of each loss part over the log interval,
                ``samples_per_s``...) or ``"val"`` (``val_dice``, ``best_val_dice``); see :data:`SCALAR_GROUPS`.
            values: name -> value (floats; ``step`` is among the train row's keys too).
            step: the optimisation step (``train.steps`` counts them).
        """
        raise NotImplementedError

    def log_image(self, name: str, image: np.ndarray, step: int) -> None:
        """Record an image: uint8 ``[H, W, 3]`` RGB (e.g. ``eval_dice``, the evaluation's Dice heatmap)."""

    def log_report(self, summary: Mapping[str, float], files: Sequence[Path]) -> None:
        """Record the run's evaluation: ``summary`` maps ``<metric>/<region>`` (``dice/WT``, ``hd95/ET``...) to the
        mean over cases and modality combinations; ``files`` are the report's files (``eval.json``, ``eval.md``)."""

    def flush(self) -> None:
        """Write out what is buffered (a fit ended; the process may be about to stop)."""

    def finish(self, status: str) -> None:
        """Close the tracker's run; ``status`` is one of :data:`STATUSES` (``stopped``: by a signal, to resume)."""

    def state_dict(self) -> dict[str, Any]:
        """State to save in checkpoints (numbers, text, lists and dicts)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned, before :meth:`start` of a resumed run."""


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested mapping (the config) as ``{"optim.lr": 0.003, "losses.0.name": "fuse", ...}``; lists are indexed.

    Args:
        data: the mapping.
        prefix: put before every key (with a dot).

    Returns:
        Dotted key -> leaf value (None, numbers, text, booleans; an empty mapping or list is kept as it is).
    """
    out: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, path))
        elif isinstance(value, list | tuple) and value and any(isinstance(v, Mapping | list | tuple) for v in value):
            out.update(flatten({str(i): v for i, v in enumerate(value)}, path))
        else:
            out[path] = list(value) if isinstance(value, tuple) else value
    return out


class CsvLog:
    """A CSV file of rows (the first row's keys are the header), kept consistent with a checkpoint on resume: opened
    with ``resume_step``, rows after that step are dropped (the file is rewritten atomically); opened without, an
    existing file is replaced.

    Args:
        path: the file.
        resume_step: the step a resumed run continues from (None: a new run).

    Raises:
        StorageError: the file cannot be replaced (read-only folder, full disk).
    """

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

    def write(self, row: Mapping[str, float | int]) -> None:
        """Append one row (the header first); a full or read-only disk is a one-line StorageError."""
        new = self.fields is None
        if new:
            self.fields = list(row.keys())
        try:
            with open(self.path, "a", newline="") as fh:
                writer = csv.DictWriter(fh, fieldnames=self.fields, extrasaction="ignore")
                if new:
                    writer.writeheader()
                writer.writerow(dict(row))
        except OSError as exc:
            raise storage_error(self.path, exc) from None
