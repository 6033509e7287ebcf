"""TensorBoard event files in ``RUN/tensorboard`` (when the tensorboard package is installed)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from prism.logger import Logger, LoggerRun

logger = logging.getLogger(__name__)


class TensorBoardLogger(Logger):
    """TensorBoard event files in ``RUN/tensorboard``: scalars, the config, the evaluation and its heatmap.

    Scalars are ``<group>/<name>`` (``train/loss``, ``val/val_dice``); the config and the evaluation's table are
    text, the evaluation's headline numbers ``eval/<metric>/<region>`` scalars, the Dice heatmap an image.

    The tensorboard package is optional (``prism-seg[dev]`` has it): without it this logger writes nothing and
    says so once. A resumed run purges the events logged after its checkpoint (``SummaryWriter(purge_step=)``).
    """

    def __init__(self) -> None:
        self.writer: Any = None

    def start(self, run: LoggerRun) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is optional
            logger.warning("tensorboard is not installed: the 'tensorboard' logger writes nothing (pip install "
                           "tensorboard, or leave it out of train.loggers)")
            return
        purge = run.resumed_from + 1 if run.resumed_from is not None else None
        self.writer = SummaryWriter(log_dir=str(run.run_dir / "tensorboard"), purge_step=purge)
        if not run.resumed_from:  # a new run (or one resumed before its first checkpoint)
            self.writer.add_text("config", _preformatted(yaml.safe_dump(dict(run.config), sort_keys=False)), 0)

    def log_scalars(self, group: str, values: Mapping[str, float], step: int) -> None:
        if self.writer is None:
            return
        for key, value in values.items():
            if key != "step":
                self.writer.add_scalar(f"{group}/{key}", float(value), step)

    def log_image(self, name: str, image: np.ndarray, step: int) -> None:
        if self.writer is not None:
            self.writer.add_image(name, image, step, dataformats="HWC")

    def log_report(self, summary: Mapping[str, float], files: Sequence[Path]) -> None:
        if self.writer is None:
            return
        for key, value in summary.items():
            self.writer.add_scalar(f"eval/{key}", float(value), 0)
        for path in files:
            if path.suffix == ".md":
                self.writer.add_text(f"eval/{path.stem}", path.read_text(encoding="utf-8"), 0)

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()

    def finish(self, status: str) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def _preformatted(text: str) -> str:
    """Text TensorBoard's markdown shows as it is (each line indented as code)."""
    return "\n".join("    " + line for line in text.splitlines())
