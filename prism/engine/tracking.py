"""Experiment trackers: the ``train.loggers`` plugins (:mod:`prism.logger`), each driven by an observer of the run.

Each logger is built through the registry (a mistake names ``train.loggers.<i>.name`` or its options) and wrapped
in a :class:`LoggerObserver` named after it, so ``trainer.remove_observer("tensorboard")`` leaves one out. The
observer runs on the main process only and turns the run's events into the logger's calls: ``start`` at the first
fit, ``log_scalars`` for log rows and validations, ``flush`` when a fit ends, ``log_image`` and ``log_report``
after :meth:`Trainer.evaluate`, and ``finish`` when the trainer closes.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import yaml

from ..config import Config, config_to_yaml
from ..errors import PluginError
from ..evaluation import writers
from ..logger import Logger, LoggerRun
from ..registry import PluginEntry, blame, describe, get_registry
from .observers import Observer
from .signals import Preempted

if TYPE_CHECKING:  # pragma: no cover
    from ..evaluation.results import EvalReport
    from .trainer import Trainer

def build_loggers(config: Config) -> list[LoggerObserver]:
    """The observers of ``train.loggers``, each around its built logger, in the order listed.

    Raises:
        PluginError: an unknown logger or option (one line naming ``train.loggers.<i>``).
        ConfigError: a logger refused its options or misses its package (e.g. mlflow not installed).
    """
    registry = get_registry()
    observers = []
    for i, choice in enumerate(config.train.loggers):
        built = registry.build("logger", choice.name, (), choice.options, field=f"train.loggers.{i}.name")
        entry = registry.get("logger", choice.name)
        if not isinstance(built, Logger):
            raise PluginError(f"train.loggers.{i}.name: {describe(entry)} did not build a prism.logger.Logger "
                              f"(got {type(built).__name__})")
        observers.append(LoggerObserver(choice.name, built, entry))
    return observers


@contextlib.contextmanager
def kept_global_generators() -> Iterator[None]:
    """Python's, NumPy's and torch's (CPU) global random generators are as they were after the block."""
    states = random.getstate(), np.random.get_state(), torch.get_rng_state()
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])


def report_summary(report: EvalReport) -> dict[str, float]:
    """``{"<metric>/<region>": value}``: each metric's mean over cases and modality combinations (``dice/WT``,
    ``hd95/ET``, ``lesion_dice/TC``...), and ``dice/mean`` over the regions."""
    summary: dict[str, float] = {}
    for metric in ("dice", "hd95", "lesion_dice", "lesion_hd95"):
        if getattr(report, metric, None) is None:
            continue
        values = report.headline(metric)
        summary.update({f"{metric}/{region}": float(v) for region, v in zip(report.regions, values, strict=True)})
        if metric == "dice" and len(values):
            summary["dice/mean"] = float(np.nanmean(values)) if not np.isnan(values).all() else float("nan")
    return summary


def read_image(path: Path) -> np.ndarray:
    """A PNG as uint8 ``[H, W, 3]`` RGB."""
    import matplotlib.image

    image = matplotlib.image.imread(path)  # float [H, W, 3 or 4] in [0, 1] for PNG
    if image.dtype != np.uint8:
        image = np.clip(np.rint(image * 255), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(image[..., :3])


class LoggerObserver(Observer):
    """Drives one logger plugin through a run (main process only); its state goes into every checkpoint.

    Args:
        key: the observer's name (the logger's name in ``train.loggers``).
        logger: the built logger.
        entry: its registry entry (named when the logger raises).
    """

    order = 0

    def __init__(self, key: str, logger: Logger, entry: PluginEntry | None = None) -> None:
        self._key = key
        self.logger = logger
        self.entry = entry
        self.started = False
        self.status = "completed"

    @property
    def key(self) -> str:
        return self._key

    def _call(self, doing: str, method: str, *args: Any) -> None:
        """``logger.<method>(*args)``, blamed on the logger's plugin, with the global random generators kept: a
        tracker that draws from them (MLflow draws from Python's) must not change what a resumed run draws."""
        with kept_global_generators(), blame(self.entry, doing) if self.entry else contextlib.nullcontext():
            getattr(self.logger, method)(*args)

    def on_fit_start(self, trainer: Trainer) -> None:
        if not trainer.dist.is_main or self.started:
            return
        run = LoggerRun(run_dir=trainer.run_dir, name=trainer.run_dir.resolve().name,
                        config=yaml.safe_load(config_to_yaml(trainer.config)), resumed_from=trainer.log_resume_step)
        self._call("starting", "start", run)
        self.started = True

    def on_log(self, trainer: Trainer, row: Mapping[str, float]) -> None:
        if self.started:
            self._call("logging scalars", "log_scalars", "train", dict(row), int(row["step"]))

    def on_validation(self, trainer: Trainer, score: float, best: float) -> None:
        if self.started:
            self._call("logging scalars", "log_scalars", "val", {"val_dice": score, "best_val_dice": best},
                       trainer.ctx.step)

    def on_fit_end(self, trainer: Trainer, error: BaseException | None) -> None:
        self.status = "completed" if error is None else "stopped" if isinstance(error, Preempted) else "failed"
        if self.started:
            self._call("flushing", "flush")

    def on_evaluation(self, trainer: Trainer, report: EvalReport) -> None:
        if not self.started:
            return
        heatmap = trainer.run_dir / writers.HEATMAP_NAME
        if heatmap.is_file():
            self._call("logging an image", "log_image", heatmap.stem, read_image(heatmap), trainer.ctx.step)
        files = [trainer.run_dir / n for n in (writers.JSON_NAME, writers.MARKDOWN_NAME)
                 if (trainer.run_dir / n).is_file()]
        self._call("logging the evaluation", "log_report", report_summary(report), files)

    def on_close(self, trainer: Trainer) -> None:
        if not self.started:
            return
        self.started = False
        self._call("finishing", "finish", self.status)

    def state_dict(self) -> dict[str, Any]:
        return self.logger.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._call("restoring its state", "load_state_dict", state)

