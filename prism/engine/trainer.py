"""The training loop: a run built by :func:`prism.engine.run.build_run`, stepped by its strategy, with everything
around the steps (progress, experiment trackers, validation, early stopping, checkpoints, signals) done by
observers (:mod:`prism.engine.observers`)."""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import platform
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .. import __version__
from ..atomic import ensure_folder, remove_stale_temporaries, write_text_atomic
from ..config import Config, config_to_yaml
from ..evaluation.adaptation import AdaptationSettings, evaluation_rule
from ..evaluation.options import EvalOptions
from ..evaluation.report import EvalReport, checkpoint_record, evaluate, write_report
from ..registry import get_registry
from ..runs import BEST_NAME, CHECKPOINT_NAME, load_run_config
from .checkpoint import load_checkpoint, save_checkpoint
from .checkpointing import (
    Checkpointer,
    best_score,
    refuse_existing_run,
    remove_run_files,
    restore_run,
    run_state,
)
from .context import run_strategy_step
from .early_stop import EarlyStopping
from .meter import GRADIENT, IntervalRead, NonFiniteError, StepMeter
from .observers import Observer, Observers
from .progress import eta_text, progress_observer, rate_text
from .run import Run, augmentation, build_run
from .run_lock import RunLock
from .signals import Preempted, SignalStop, StopSignals
from .tracking import build_loggers
from .validation import Validation, validation_dice

if TYPE_CHECKING:  # pragma: no cover
    from rich.console import Console

__all__ = ["BEST_NAME", "CHECKPOINT_NAME", "Preempted", "Trainer", "augmentation", "default_observers", "eta_text",
           "load_run_config", "rate_text", "run_info"]

logger = logging.getLogger(__name__)


def run_info(config: Config) -> dict[str, Any]:
    """Versions of prism, torch and every plugin in use, for the run folder."""
    reg = get_registry()
    used = [("backbone", config.model.name), ("strategy", config.strategy.name),
            ("masking", config.masking.train.name), *[("masking", c.name) for c in config.masking.extra.values()],
            *[("loss", c.name) for c in config.losses], *[("logger", c.name) for c in config.train.loggers]]
    plugins = []
    for kind, name in dict.fromkeys(used):
        e = reg.get(kind, name)
        plugins.append({"kind": kind, "name": name, "plugin": e.plugin, "distribution": e.distribution,
                        "version": e.version})
    return {"prism": __version__, "torch": torch.__version__, "python": platform.python_version(),
            "plugins": plugins}


def default_observers(config: Config, console: Console | None = None) -> list[Observer]:
    """The built-in observers of a run: progress, one per logger of ``train.loggers`` (named after it: ``csv``,
    ``tensorboard``...), validation and ``best.pt`` (``train.val_every``), early stopping (``train.early_stop``),
    ``last.pt`` and stopping on signals.

    Raises:
        PluginError, ConfigError: an unknown logger, a bad option, or a logger's missing package (one line).
    """
    t = config.train
    observers: list[Observer] = [progress_observer(console), *build_loggers(config)]
    if t.val_every:
        observers.append(Validation(t.val_every))
    if t.early_stop is not None:
        observers.append(EarlyStopping(t.early_stop))
    return [*observers, Checkpointer(t.checkpoint_every), SignalStop()]


class Trainer:
    """Owns one run folder: ``Trainer(config, run_dir, cache_path=...).fit()``; ``resume=True`` continues from
    ``run_dir/last.pt``.

    Args:
        config: the validated config.
        run_dir: the run folder. One that holds a run (``last.pt``, ``best.pt`` or ``eval.json``) is refused
            unless ``resume`` or ``overwrite``.
        cache_path: the prism cache to train on.
        resume: continue the run in ``run_dir`` (from ``last.pt``; from step 0 when it was stopped before its
            first checkpoint).
        console: a rich console for the progress (a bar on a terminal, lines otherwise); None: lines go to the
            ``prism.engine.progress`` logger.
        check_splits: further splits that must exist in the cache (e.g. ``eval.split``).
        observers: observers added after the built-in ones (:mod:`prism.engine.observers`).
        overwrite: start anew in a folder that holds a run, removing the old run's files first.

    Raises:
        ConfigError, PluginError, CacheError, CheckpointError, RunLockedError: one line; nothing is written.
    """

    def __init__(self, config: Config, run_dir: Path, *, cache_path: Path, resume: bool = False,
                 console: Console | None = None, check_splits: tuple[str, ...] = (),
                 observers: Iterable[Observer] = (), overwrite: bool = False) -> None:
        self.run_dir = Path(run_dir)
        self.observers = Observers([*default_observers(config, console), *observers])
        self.run: Run = build_run(config, cache_path=cache_path, check_splits=check_splits)
        self.config = self.run.config
        self.resumed = resume
        self.meter = StepMeter(self.config.train.nonfinite, self.run.dist)
        self.best_val = float("-inf")  # best validation mean Dice so far (best.pt holds its weights)
        self.saved_step: int | None = None  # the step last.pt holds
        self.end_step = self.config.train.steps
        self.signals: StopSignals | None = None
        self.stop_reason: str | None = None
        self.history: list[dict[str, float]] = []
        try:
            if not resume:  # after the config's own checks: a mistake there is the one to report
                refuse_existing_run(self.run_dir, overwrite=overwrite)
            if resume:
                self._resume()
            # one writer per run folder, taken after every check (config, cache, checkpoint): a mistake writes
            # nothing
            self.lock = RunLock(self.run_dir).acquire() if self.dist.is_main else None
        except BaseException:
            self.run.close()
            raise
        if self.dist.is_main:
            if overwrite and not resume:
                removed = remove_run_files(self.run_dir)
                if removed:
                    logger.info("%s: removed the previous run's files (%s)", self.run_dir, ", ".join(removed))
            remove_stale_temporaries(self.run_dir)  # only files whose writer (pid on this host) is dead

    # ---- the parts (compatibility with code that reads them off the trainer) ----------------------------------
    @property
    def ctx(self) -> Any:
        return self.run.ctx

    @property
    def strategy(self) -> Any:
        return self.run.strategy

    @property
    def strategy_entry(self) -> Any:
        return self.run.strategy_entry

    @property
    def reader(self) -> Any:
        return self.run.reader

    @property
    def device(self) -> torch.device:
        return self.run.device

    @property
    def dist(self) -> Any:
        return self.run.dist

    @property
    def train_cases(self) -> tuple[str, ...]:
        return self.run.train_cases

    @property
    def val_cases(self) -> tuple[str, ...]:
        return self.run.val_cases

    @property
    def resume(self) -> bool:
        return self.resumed

    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / CHECKPOINT_NAME

    @property
    def log_resume_step(self) -> int | None:
        """Where the run's CSV logs continue (rows after it are dropped); None: they start anew."""
        return self.ctx.step if self.resumed or self.ctx.step > 0 else None

    # ---- observers ---------------------------------------------------------------------------------------------
    def add_observer(self, observer: Observer) -> None:
        """Attach ``observer`` (called from the next ``fit`` on; see :mod:`prism.engine.observers`)."""
        self.observers.add(observer)

    def remove_observer(self, name: str) -> Observer:
        """Detach the observer named ``name`` (e.g. ``"tensorboard"``, ``"progress"``) and return it."""
        return self.observers.remove(name)

    def replace_observer(self, name: str, observer: Observer) -> None:
        """Put ``observer`` in place of the one named ``name``."""
        self.observers.remove(name)
        self.observers.add(observer)

    def request_stop(self, reason: str) -> None:
        """Stop after the current step (an observer's early stop); the final checkpoint is written."""
        self.stop_reason = reason

    # ---- checkpoints ---------------------------------------------------------------------------------------------
    def _resume(self) -> None:
        checkpoint = self.checkpoint_path
        if not checkpoint.is_file() and (self.run_dir / "config.yaml").is_file():
            logger.info("%s not written yet: starting the run from step 0 with its config.yaml", checkpoint)
            return
        state = load_checkpoint(checkpoint)
        restore_run(self.run, state, checkpoint)
        if "meter" in state:
            self.meter.load_state_dict(state["meter"], self.device)
        else:  # a checkpoint without the open log interval: the next row starts at the checkpoint
            self.meter.start = self.ctx.step
        self.observers.load_state_dict(state.get("observers", {}))
        self.best_val = best_score(self.run_dir, state)
        self.saved_step = self.ctx.step

    def save(self, name: str = CHECKPOINT_NAME, **extra: Any) -> Path | None:
        """Write ``last.pt`` (or ``name``) atomically (rank 0: every rank holds the same state), after checking
        that the state is healthy (:meth:`verify_health`); a second Ctrl-C waits for the write."""
        self.verify_health()
        if not self.dist.is_main:
            return None
        state = {**run_state(self.run, self.strategy.state_dict()), "best_val": self.best_val,
                 "meter": self.meter.state_dict(), "observers": self.observers.state_dict(), **extra}
        guard = self.signals.protect() if self.signals is not None else contextlib.nullcontext()
        with guard:
            path = save_checkpoint(self.run_dir / name, state)
        if name == CHECKPOINT_NAME:
            self.saved_step = self.ctx.step
        self.observers.notify("on_checkpoint", self, path)
        return path

    def validate(self) -> float | None:
        """Validation mean Dice (rank 0; None elsewhere or when off); a new best is written to ``best.pt``."""
        self.verify_health()
        if not self.val_cases or not self.dist.is_main:
            return None
        cfg = self.config
        with self.evaluated_weights() as model:
            score = validation_dice(model, self.reader, self.val_cases, device=self.device,
                                    amp_dtype=self.ctx.amp_dtype,
                                    options=EvalOptions.from_config(cfg.eval, channels_last=cfg.train.channels_last))
            if score > self.best_val:
                self.best_val = score
                self.save(BEST_NAME, val_dice=score)
        return score

    def evaluated_weights(self) -> contextlib.AbstractContextManager[torch.nn.Module]:
        """The model as validation and evaluation see it: with the ``train.ema`` average in place of its weights
        for the block (its own weights come back after), or as it is without ``train.ema``."""
        if self.run.ema is None:
            return contextlib.nullcontext(self.ctx.model)
        return self.run.ema.applied()

    def verify_health(self) -> None:
        """Read the open interval's health (one transfer, none when this step was read already); in ``stop`` mode
        a non-finite loss part or gradient raises :class:`NonFiniteError`."""
        self._check(self.meter.read(self.ctx.step, reset=False))

    def _check(self, read: IntervalRead) -> None:
        if read.unchanged is not None:
            logger.warning("step %d changed no parameter: strategy '%s' updated nothing (does its step call "
                           "ctx.backward and ctx.optimizer_step?)", read.unchanged, self.config.strategy.name)
        if not read.first_bad or self.config.train.nonfinite != "stop":
            return
        raise NonFiniteError(self._nonfinite_message(read))

    def _nonfinite_message(self, read: IntervalRead) -> str:
        first = min(read.first_bad.values())
        parts = [n for n, s in read.first_bad.items() if s == first and n != GRADIENT]
        what = ("loss part(s) " + ", ".join(parts)) if parts else "gradient"
        if GRADIENT in read.first_bad and parts:
            what += " and the gradient"
        kept = (f"{self.checkpoint_path} holds step {self.saved_step}, the last good state"
                if self.saved_step is not None else "no checkpoint was written")
        return (f"step {first}: non-finite {what}; the run stopped at step {read.step} and {kept} (lower optim.lr "
                "and resume, or set train.nonfinite=skip to skip such steps)")

    # ---- the loop ------------------------------------------------------------------------------------------------
    def fit(self, stop_at: int | None = None, signals: StopSignals | None = None) -> list[dict[str, float]]:
        """Train up to ``train.steps`` (or stop early at step ``stop_at``, e.g. to time-box a job).

        SIGTERM, SIGUSR1 and SIGINT finish the step in flight, write ``last.pt`` and raise :class:`Preempted`;
        ``signals``: an already installed :class:`StopSignals` to watch (the CLI's, which also covers building
        and evaluation), else one is installed for the loop.

        Returns:
            The rows logged during this call (``on_log``'s rows).

        Raises:
            Preempted: a stop signal arrived (``last.pt`` written).
            NonFiniteError: a non-finite loss part or gradient, with ``train.nonfinite: stop``.
        """
        total = self.config.train.steps
        self.end_step = total if stop_at is None else min(stop_at, total)
        self.signals = signals if signals is not None else StopSignals().__enter__()
        self.history, self.stop_reason, error = [], None, None
        try:
            self._start()
            while self.ctx.step < self.end_step and self.stop_reason is None:
                self._step()
            if self.stop_reason is not None:
                logger.info("stopped at step %d: %s", self.ctx.step, self.stop_reason)
        except BaseException as exc:
            error = exc
            raise
        finally:
            self._finish(error, own_signals=signals is None)
        return self.history

    def _start(self) -> None:
        self._write_run_files()
        self.ctx.model.train()
        self._clock = (time.perf_counter(), 0)  # interval start, samples since
        self.meter.expect_update(self.ctx.parameters(), self.ctx.step + 1)
        self.observers.notify("on_fit_start", self)

    def _step(self) -> None:
        ctx, cfg = self.ctx, self.config
        self.observers.notify("on_step_start", self)
        ctx.begin_step()
        parts = run_strategy_step(self.strategy, self.strategy_entry, ctx)  # blamed and checked at the seam
        if self.strategy.uses_optimizer:
            self.run.scheduler.step()
        if self.run.ema is not None:
            self.run.ema.update()
        ctx.step += 1
        self._clock = (self._clock[0], self._clock[1] + cfg.data.batch_size * cfg.train.accumulate)
        if ctx.step % cfg.train.epoch_length == 0:
            ctx.losses.on_epoch_end()
        self.meter.add(parts, ctx.end_step())
        if ctx.step % cfg.train.log_every == 0 or ctx.step == cfg.train.steps:
            self._log()
        self.observers.notify("on_step_end", self, parts)

    def _log(self) -> None:
        read = self.meter.read(self.ctx.step, reset=True)  # the one host read of the interval
        self._check(read)
        start, samples = self._clock
        elapsed = time.perf_counter() - start
        row: dict[str, float] = {"step": self.ctx.step, "lr": self.ctx.learning_rate(), **read.means,
                                 "samples_per_s": samples / elapsed if elapsed > 0 else 0.0}
        if self.config.train.nonfinite == "skip":
            row["skipped"] = read.skipped
        if self.device.type == "cuda":
            row["peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
        self._clock = (time.perf_counter(), 0)
        self.history.append(row)
        self.observers.notify("on_log", self, row)

    def _finish(self, error: BaseException | None, *, own_signals: bool) -> None:
        try:
            for obs in list(self.observers):
                try:
                    obs.on_fit_end(self, error)
                except Exception:
                    if error is None:
                        raise
                    logger.exception("observer '%s' failed while the run stopped", obs.key)
        finally:
            if own_signals and self.signals is not None:
                self.signals.__exit__(None, None, None)
            self.signals = None
            self.ctx.streams.close()

    def _write_run_files(self) -> None:
        if not self.dist.is_main:
            return
        ensure_folder(self.run_dir)
        write_text_atomic(self.run_dir / "config.yaml", config_to_yaml(self.config))
        write_text_atomic(self.run_dir / "run_info.json", json.dumps(run_info(self.config), indent=2) + "\n")

    # ---- the end -------------------------------------------------------------------------------------------------
    def close(self, *, synchronise: bool = True) -> None:
        """Finish the experiment trackers (observers' ``on_close``), leave the process group (under torchrun),
        release the cache handle and the run folder's lock; safe to call more than once. ``synchronise=False``
        (after an error) skips the barrier the other ranks may never reach."""
        try:
            self.observers.notify("on_close", self)  # the experiment trackers finish their runs
        finally:
            self._release(synchronise)

    def _release(self, synchronise: bool) -> None:
        import torch.distributed as dist

        if self.ctx.ddp:  # the DDP reducer must go before its process group (or gloo aborts at exit)
            self.ctx.forward_module, self.ctx.ddp = self.ctx.model, False
            gc.collect()
        if self.dist.enabled and dist.is_initialized():
            if synchronise:
                dist.barrier()
            dist.destroy_process_group()
        self.run.close()
        if self.lock is not None:
            self.lock.release()

    def eval_cases(self) -> list[str]:
        """The cases :meth:`evaluate` scores (``eval.split``, at most ``eval.max_cases``)."""
        cases = list(self.reader.split(self.config.eval.split))
        return cases[: self.config.eval.max_cases] if self.config.eval.max_cases else cases

    def evaluate(self, on_case: Callable[[str], None] | None = None) -> EvalReport | None:
        """Evaluate on every combination (rank 0 only; other ranks return None); ``on_case(case_id)`` after each
        case (progress)."""
        if not self.dist.is_main:
            return None
        cfg = self.config
        cases = self.eval_cases()
        with self.evaluated_weights() as model:  # last.pt's "model": the train.ema average when there is one
            report = evaluate(model, self.reader, cases, device=self.device, amp_dtype=self.ctx.amp_dtype,
                              options=EvalOptions.from_config(cfg.eval, channels_last=cfg.train.channels_last),
                              adaptation=AdaptationSettings.from_config(cfg.eval),
                              adapt_rule=evaluation_rule(self.strategy), on_case=on_case)
        checkpoint = self.run_dir / CHECKPOINT_NAME  # the model evaluated is the one fit() saved last
        report.checkpoint = checkpoint_record(checkpoint) if checkpoint.is_file() else None
        write_report(report, self.run_dir)
        self.observers.notify("on_evaluation", self, report)
        return report

