"""Observers: how code outside the loop takes part in a run (progress, logs, checkpoints, validation, signals).

:class:`prism.engine.trainer.Trainer` runs strategy steps; everything else a run does around them is an observer
called at fixed points of the loop. The built-in behaviours are observers too (:func:`default_observers`), so a
Python user can add one (``Trainer(..., observers=[...])`` or ``trainer.add_observer(obs)``), or replace a built-in
one (``trainer.replace_observer("progress", mine)``, or ``trainer.remove_observer("tensorboard")``).

The order of calls in one ``fit()``::

    on_fit_start                      once, after a resume is restored, before the first step
    for each step:
        on_step_start                 before the step (``trainer.ctx.step`` steps done so far)
        strategy.step(ctx)            the optimisation step (then the LR schedule and train.ema's average)
        on_log(row)                   every train.log_every steps and at the last step: interval means (floats)
        on_step_end(parts)            every step, detached device tensors (reading one makes the host wait)
    on_fit_end(error)                 once, also after an error or a stop (``error`` is then the exception)

and after ``fit``: ``on_evaluation(report)`` when ``trainer.evaluate()`` has written the report, and ``on_close``
when ``trainer.close()`` ends the run (the experiment trackers of ``train.loggers`` finish there).

Within one event observers run by ``order`` (lower first; ties keep the order they were added in): yours
(``order`` 0) run before the built-in validation (50), checkpointing (80) and signal handling (90), so state an
observer updates in ``on_step_end`` (an EMA of the weights, say) is in place when the checkpoint of that step is
written. Checkpoints, validations and stops are events an observer sees through ``on_checkpoint``,
``on_validation`` and ``on_fit_end``.

Observers with state (EMA weights, early-stopping counters) return it from ``state_dict`` and get it back from
``load_state_dict`` when the run resumes: it is saved in every checkpoint under the observer's ``name``. An
observer stops the run after the current step with ``trainer.request_stop(reason)`` (the final checkpoint is
written as at the end of a run).

Example: an observer that counts steps and prints each logged loss::

    class Counter(Observer):
        name = "counter"

        def __init__(self):
            self.steps = 0

        def on_step_end(self, trainer, parts):
            self.steps += 1

        def on_log(self, trainer, row):
            print(row["step"], row["loss"])

        def state_dict(self):
            return {"steps": self.steps}

        def load_state_dict(self, state):
            self.steps = state["steps"]
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch

if TYPE_CHECKING:  # pragma: no cover
    from ..evaluation.results import EvalReport
    from .trainer import Trainer


class Observer:
    """Base class of the observers of a run: override the events you need (each is a no-op here).

    Class attributes:
        name: the observer's key (checkpointed state, ``replace_observer``); default: the class name.
        order: place among observers within one event (lower first; user observers default to 0).
    """

    name: ClassVar[str | None] = None
    order: ClassVar[int] = 0

    @property
    def key(self) -> str:
        """``name``, or the class name when ``name`` is not set."""
        return self.name or type(self).__name__

    def on_fit_start(self, trainer: Trainer) -> None:
        """Before the first step of ``fit`` (``trainer.ctx.step`` is the step it starts from)."""

    def on_step_start(self, trainer: Trainer) -> None:
        """Before every step (a learning-rate warm-up or an accumulation schedule would act here)."""

    def on_step_end(self, trainer: Trainer, parts: Mapping[str, torch.Tensor]) -> None:
        """After every step (``trainer.ctx.step`` already counts it).

        Args:
            trainer: the run.
            parts: the step's detached loss parts on the device; reading one (``float(v)``) makes the host wait
                for the device, so keep them on the device or read them in ``on_log``.
        """

    def on_log(self, trainer: Trainer, row: Mapping[str, float]) -> None:
        """Every ``train.log_every`` steps and at the last step.

        Args:
            trainer: the run.
            row: ``step``, ``lr``, the mean of every loss part over the steps since the previous row,
                ``samples_per_s`` (and ``skipped`` with ``train.nonfinite: skip``, ``peak_mem_gib`` on CUDA).
        """

    def on_validation(self, trainer: Trainer, score: float, best: float) -> None:
        """After a validation (``train.val_every``): its mean Dice and the best so far (``best.pt``'s)."""

    def on_checkpoint(self, trainer: Trainer, path: Path) -> None:
        """After a checkpoint was written to ``path`` (``last.pt`` or ``best.pt``)."""

    def on_fit_end(self, trainer: Trainer, error: BaseException | None) -> None:
        """Once, when ``fit`` returns or raises (``error``: the exception, e.g. ``Preempted``; else None)."""

    def on_evaluation(self, trainer: Trainer, report: EvalReport) -> None:
        """After :meth:`Trainer.evaluate` wrote the run's evaluation (``eval.json``, ``eval_dice.png``...) (rank 0)."""

    def on_close(self, trainer: Trainer) -> None:
        """When :meth:`Trainer.close` ends the run (after ``fit`` and any evaluation)."""

    def state_dict(self) -> dict[str, Any]:
        """State to save in checkpoints (tensors, numbers, strings, lists, dicts)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned, when the run resumes."""


class Observers:
    """The observers of a run, kept in call order; ``notify(event, ...)`` calls each one."""

    def __init__(self, observers: Iterable[Observer] = ()) -> None:
        self._items: list[Observer] = []
        for obs in observers:
            self.add(obs)

    def __iter__(self) -> Iterator[Observer]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: str) -> Observer | None:
        """The observer named ``key`` (None when there is none)."""
        return next((o for o in self._items if o.key == key), None)

    def add(self, observer: Observer) -> None:
        """Add ``observer`` after those of the same ``order``.

        Raises:
            TypeError: ``observer`` is not an :class:`Observer`.
            ValueError: another observer already has its ``name``.
        """
        if not isinstance(observer, Observer):
            raise TypeError(f"an observer must subclass prism.engine.observers.Observer, got "
                            f"{type(observer).__name__}")
        if self.get(observer.key) is not None:
            raise ValueError(f"an observer named '{observer.key}' is already attached (replace_observer "
                             "replaces it)")
        self._items.append(observer)
        self._items.sort(key=lambda o: o.order)  # stable: ties keep their insertion order

    def remove(self, key: str) -> Observer:
        """Detach and return the observer named ``key``.

        Raises:
            KeyError: no observer has that name.
        """
        found = self.get(key)
        if found is None:
            raise KeyError(f"no observer named '{key}' (attached: {', '.join(o.key for o in self._items)})")
        self._items.remove(found)
        return found

    def notify(self, event: str, *args: Any) -> None:
        """Call ``observer.<event>(*args)`` on every observer, in order."""
        for obs in list(self._items):
            getattr(obs, event)(*args)

    def state_dict(self) -> dict[str, dict[str, Any]]:
        """``{name: state}`` of the observers that have state."""
        return {o.key: s for o in self._items if (s := o.state_dict())}

    def load_state_dict(self, states: Mapping[str, dict[str, Any]]) -> None:
        """Give each observer its saved state (observers absent from ``states`` keep theirs)."""
        for obs in self._items:
            if obs.key in states:
                obs.load_state_dict(states[obs.key])
