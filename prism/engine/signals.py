"""Stop training cleanly on SIGTERM, SIGUSR1 and SIGINT: the step in flight finishes, then a checkpoint is written.

SIGTERM is what SLURM, Kubernetes and ``timeout`` send; SIGUSR1 is SLURM's warning (``--signal=USR1@120``); SIGINT
is Ctrl-C. The handler only records the signal; the training loop asks :attr:`StopSignals.received` after each
step. A second SIGINT while stopping aborts at once (KeyboardInterrupt), as users expect of a second Ctrl-C,
except while a checkpoint is being written (:meth:`StopSignals.protect`): the write finishes first, then the run
stops as it would have on the first signal.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator, Mapping
from types import FrameType, TracebackType
from typing import TYPE_CHECKING, Any

from .observers import Observer

if TYPE_CHECKING:  # pragma: no cover
    from .trainer import Trainer

#: the signals a run stops on
STOP_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)


def exit_code_for(signum: int) -> int:
    """The exit status of a run stopped by ``signum``: 130 for SIGINT, 143 (= 128 + SIGTERM) for SIGTERM and
    SIGUSR1, so a job script sees the same "stopped, resumable" status whichever warning arrived."""
    return 130 if signum == signal.SIGINT else 128 + int(signal.SIGTERM)


class Preempted(Exception):
    """Training stopped on a signal after writing its checkpoint at ``step``."""

    def __init__(self, signum: int, step: int, total: int, checkpoint: Any) -> None:
        self.signum, self.step, self.total, self.checkpoint = int(signum), int(step), int(total), checkpoint
        super().__init__(f"stopped by {signal.Signals(self.signum).name} at step {step}/{total}")

    @property
    def exit_code(self) -> int:
        return exit_code_for(self.signum)


class StopSignals:
    """Context manager recording the first stop signal (main thread only; elsewhere it records nothing).

    >>> with StopSignals() as stop:
    ...     while training:
    ...         step()
    ...         if stop.received is not None:
    ...             save(); break
    """

    def __init__(self, signals: tuple[signal.Signals, ...] = STOP_SIGNALS) -> None:
        self.signals = signals
        self.received: int | None = None
        self._previous: dict[int, Any] = {}
        self._protected = 0
        self.deferred = 0  # second signals that arrived while protected (and were not acted on)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is None:
            self.received = signum
        elif signum == signal.SIGINT:
            if self._protected:  # a checkpoint is being written: finish it, then stop as planned
                self.deferred += 1
                return
            raise KeyboardInterrupt  # a second Ctrl-C: stop now

    @contextlib.contextmanager
    def protect(self) -> Iterator[None]:
        """A section a second Ctrl-C does not interrupt (a checkpoint write): the signal is only counted, and the
        run stops after the section as the first signal asked."""
        self._protected += 1
        try:
            yield
        finally:
            self._protected -= 1

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in self.signals:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}


def stop_requested(stop: StopSignals, trainer: Trainer) -> int | None:
    """The stop signal received by any rank (all ranks stop at the same step), else None."""
    flag = stop.received or 0
    if trainer.dist.enabled:
        import torch
        import torch.distributed as dist

        t = torch.tensor([flag], device=trainer.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        flag = int(t.item())
    return flag or None


class SignalStop(Observer):
    """Stops the run on SIGTERM, SIGUSR1 or SIGINT: after the step in flight, ``last.pt`` is written (if that
    step did not write it already) and :class:`Preempted` is raised; a signal that arrived while the run was
    being built stops it before its first step."""

    name = "signals"
    order = 90

    def _check(self, trainer: Trainer) -> None:
        stop = trainer.signals
        signum = stop_requested(stop, trainer) if stop is not None else None
        if signum is None:
            return
        if trainer.saved_step != trainer.ctx.step:
            trainer.save()
        raise Preempted(signum, trainer.ctx.step, trainer.config.train.steps, trainer.checkpoint_path)

    def on_fit_start(self, trainer: Trainer) -> None:
        self._check(trainer)

    def on_step_end(self, trainer: Trainer, parts: Mapping[str, Any]) -> None:
        self._check(trainer)
