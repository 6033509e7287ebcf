"""Early stopping on the validation score (``train.early_stop``), as an observer that calls ``request_stop``.

A validation improves on the best score so far when it exceeds it by more than ``min_delta`` (a NaN score, no
case could be scored, never improves). After ``patience`` validations in a row without an improvement, the run
stops after the current step: the final checkpoint is written and the run is evaluated as after a normal end.
The counters are checkpointed, so a resumed run counts on where it stopped (and a resumed run that had stopped
trains no further, unless ``patience`` was raised).
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any

from ..config import EarlyStopConfig
from .observers import Observer

if TYPE_CHECKING:  # pragma: no cover
    from .trainer import Trainer

logger = logging.getLogger(__name__)


class EarlyStopping(Observer):
    """Stops the run when the validation mean Dice has not improved by more than ``min_delta`` for ``patience``
    validations in a row.

    Args:
        options: ``train.early_stop`` (``patience``, ``min_delta``).
    """

    name = "early_stop"
    order = 60  # after validation (50), before the checkpoint of the step (80)

    def __init__(self, options: EarlyStopConfig) -> None:
        self.patience = options.patience
        self.min_delta = options.min_delta
        self.best = -math.inf
        self.best_step: int | None = None
        self.waited = 0  # validations since the last improvement

    @property
    def exhausted(self) -> bool:
        """Whether ``patience`` validations in a row have gone by without an improvement."""
        return self.waited >= self.patience

    def reason(self) -> str:
        best = f"best {self.best:.4f} at step {self.best_step}" if self.best_step is not None else "no score yet"
        return (f"early stop: validation Dice has not improved by more than {self.min_delta:g} for {self.waited} "
                f"validations ({best})")

    def on_fit_start(self, trainer: Trainer) -> None:
        if self.exhausted:  # a resumed run that had stopped early
            trainer.request_stop(self.reason())

    def on_validation(self, trainer: Trainer, score: float, best: float) -> None:
        if not math.isnan(score) and score > self.best + self.min_delta:
            self.best, self.best_step, self.waited = score, trainer.ctx.step, 0
        else:
            self.waited += 1
        if self.exhausted:
            logger.info("step %d: %s", trainer.ctx.step, self.reason())
            trainer.request_stop(self.reason())

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_step": self.best_step, "waited": self.waited}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = float(state["best"])
        self.best_step = None if state.get("best_step") is None else int(state["best_step"])
        self.waited = int(state["waited"])
