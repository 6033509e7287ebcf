"""Stop training cleanly on SIGTERM, SIGUSR1 and SIGINT: the step in flight finishes, then a checkpoint is written.

SIGTERM is what SLURM, Kubernetes and ``timeout`` send; SIGUSR1 is SLURM's warning (``--signal=USR1@120``); SIGINT
is Ctrl-C. The handler only records the signal; the training loop asks :attr:`StopSignals.received` after each
step. A second SIGINT while stopping aborts at once (KeyboardInterrupt), as users expect of a second Ctrl-C.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType, TracebackType
from typing import Any

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

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now
        if self.received is None:
            self.received = signum

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
