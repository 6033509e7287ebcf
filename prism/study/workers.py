"""Study runs in local child processes: at most ``jobs`` at once, a stop signal forwarded to every running one,
and no child outliving the study.

Each run gets a fresh process (``spawn``), one GPU each when several are visible. When the study is asked to
stop (SIGTERM, SIGUSR1, SIGINT), every running child gets SIGTERM: it finishes its step, writes its checkpoint and
reports itself preempted; runs not started yet stay "to start". A child gets the signal only once it has said
that it watches for it (a child still starting up would die of it). A child whose study process disappears
(killed with SIGKILL, say) stops the same way: a thread in each child watches its parent.
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)

#: how often a child checks that the study process is still there (seconds)
PARENT_POLL_S = 1.0
#: how long the study waits for its children to stop after an error of its own before killing them (seconds)
ABORT_GRACE_S = 60.0


def _watch_parent(parent: int) -> None:
    """In a child: when the study process is gone, stop like on SIGTERM (the run writes its checkpoint)."""
    while os.getppid() == parent:
        time.sleep(PARENT_POLL_S)
    os.kill(os.getpid(), signal.SIGTERM)


#: the first message of a child: its stop-signal watcher is installed (signals may be passed on from now)
READY = "ready"


def _child(run: Callable[[Any, Any], Any], task: Any, gpu: int | None, conn: Any, parent: int) -> None:
    """A child process: one run under its own stop-signal watcher; ``READY``, then the outcome, go back through
    ``conn``."""
    from ..engine.signals import StopSignals

    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)
    with StopSignals() as stop:
        threading.Thread(target=_watch_parent, args=(parent,), daemon=True, name="watch-study").start()
        try:
            conn.send(READY)
        except OSError:  # the study ended while this process was starting
            return
        outcome = run(task, stop)
    try:
        conn.send(outcome)
    except OSError:  # the study is gone: the run's folder holds what it did
        pass
    finally:
        conn.close()


@dataclass
class _Running:
    task: Any
    process: Any
    conn: Any
    gpu: int | None
    ready: bool = False
    signalled: bool = False
    outcome: Any = None
    closed: bool = False  # the child closed its end: only its exit is left to wait for

    def read(self) -> None:
        """Take every message waiting in the pipe (READY, the outcome)."""
        try:
            while not self.closed and self.conn.poll():
                message = self.conn.recv()
                if message == READY:
                    self.ready = True
                else:
                    self.outcome = message
        except (EOFError, OSError):
            self.closed = True


def run_in_processes(tasks: list[Any], run: Callable[[Any, Any], Any], *, jobs: int, gpus: int, stop: Any,
                     done: Callable[[Any], None], died: Callable[[Any, str], Any]) -> None:
    """Run every task as ``run(task, stop_signals)`` in a child process, ``jobs`` at once.

    Args:
        tasks: picklable tasks, started in order.
        run: a module-level function (it is pickled to the child) returning a picklable outcome.
        jobs: children at once (at most ``gpus`` when more than one GPU is visible).
        gpus: visible GPUs; with more than one, each child sees only its own (``CUDA_VISIBLE_DEVICES``).
        stop: the study's :class:`~prism.engine.signals.StopSignals`; once it has received a signal, running
            children get SIGTERM and no new child starts.
        done: called with each outcome, in completion order.
        died: ``died(task, why)`` makes the outcome of a child that ended without reporting one (when the study
            had been stopped, it is marked ``preempted``: the child died before its run began).
    """
    ctx = multiprocessing.get_context("spawn")
    free_gpus: list[int | None] = list(range(gpus)) if gpus > 1 else []
    slots = min(jobs, gpus) if gpus > 1 else jobs
    queue = list(tasks)
    running: list[_Running] = []
    try:
        while queue or running:
            while queue and len(running) < slots and stop.received is None:
                task = queue.pop(0)
                gpu = free_gpus.pop(0) if free_gpus else None
                receive, send = ctx.Pipe(duplex=False)
                process = ctx.Process(target=_child, args=(run, task, gpu, send, os.getpid()), daemon=False,
                                      name="prism-study-run")
                process.start()
                send.close()
                running.append(_Running(task, process, receive, gpu))
            if not running:
                break
            if stop.received is not None:  # pass the stop on to every child that watches for it
                for child in running:
                    if child.ready and not child.signalled:
                        child.signalled = True
                        _signal(child.process, signal.SIGTERM)
            waitables = [c.conn for c in running if not c.closed] + [c.process.sentinel for c in running]
            multiprocessing.connection.wait(waitables, timeout=0.5)
            for child in list(running):
                child.read()
                if child.process.exitcode is None and child.process.is_alive():
                    continue
                child.process.join()
                child.read()
                child.conn.close()
                running.remove(child)
                if child.gpu is not None:
                    free_gpus.append(child.gpu)
                outcome = child.outcome
                if outcome is None:
                    outcome = died(child.task, _exit_text(child.process.exitcode))
                    if stop.received is not None:  # the stop came before its run could watch for it
                        outcome.preempted, outcome.error = True, "stopped before it started"
                done(outcome)
    finally:  # an error in the study itself (a second Ctrl-C, a bug): its children stop with it
        _stop_all([c.process for c in running])


def _signal(process: Any, signum: int) -> None:
    try:
        if process.pid is not None and process.exitcode is None:
            os.kill(process.pid, signum)
    except ProcessLookupError:
        pass


def _stop_all(processes: list[Any]) -> None:
    for p in processes:
        _signal(p, signal.SIGTERM)
    deadline = time.monotonic() + ABORT_GRACE_S
    for p in processes:
        p.join(max(0.0, deadline - time.monotonic()))
        if p.exitcode is None:
            logger.warning("run process %s did not stop within %.0f s: killed", p.pid, ABORT_GRACE_S)
            p.kill()
            p.join()


def _exit_text(code: int | None) -> str:
    if code is not None and code < 0:
        name = signal.Signals(-code).name
        hint = " (out of memory?)" if -code == signal.SIGKILL else ""
        return f"its process was killed by {name}{hint}"
    return f"its process ended with exit status {code} without reporting"


__all__ = ["run_in_processes"]
