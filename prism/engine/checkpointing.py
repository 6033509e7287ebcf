"""A run's checkpoints: what ``last.pt`` holds, how a resume puts it back, when it is written, and run folders
that are never overwritten by accident.

``last.pt`` holds every piece of state a step reads: weights, optimizer, LR schedule, fp16 scaler, strategy, loss
terms, masking policies, stream positions, every random generator (:mod:`prism.engine.rng`), the open log
interval (:class:`prism.engine.meter.StepMeter`) and the observers' state; so a resumed run is bitwise the run
that was never stopped.

A checkpoint's ``model`` holds the weights the run is used with (evaluation, ``prism-eval``, ``prism-predict``,
``model.init_from``): with ``train.ema`` the moving average, the weights training continues from being in
``training_model``.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import __version__
from ..config import config_to_yaml
from ..data.cache_reader import dataset_changed_message
from ..errors import CheckpointError, ConfigError
from ..evaluation import adaptation_curve, writers
from ..runs import BEST_NAME, CHECKPOINT_NAME
from .checkpoint import load_checkpoint, mismatch_message
from .observers import Observer
from .rng import capture_rng, restore_rng
from .run import Run
from .run_lock import LOCK_NAME, RunLock
from .schedules import stretch_schedule

if TYPE_CHECKING:  # pragma: no cover
    from .trainer import Trainer

logger = logging.getLogger(__name__)


#: what makes a folder hold a run worth keeping: trained weights or an evaluation of them
RUN_MARKERS = (CHECKPOINT_NAME, BEST_NAME, writers.JSON_NAME)
#: the files and folders prism writes into a run folder (removed by ``overwrite``; other files are left alone)
RUN_FILES = (
    "config.yaml", "run_info.json", CHECKPOINT_NAME, BEST_NAME, "train_log.csv", "val_log.csv", "tensorboard",
    writers.JSON_NAME, writers.CSV_NAME, writers.MARKDOWN_NAME, writers.HEATMAP_NAME,
    adaptation_curve.JSON_NAME, adaptation_curve.MARKDOWN_NAME, adaptation_curve.PLOT_NAME,
    "fewshot.json", "fewshot.md", "study.log", "error.txt", "mlruns", "wandb",
)


def run_state(run: Run, strategy_state: dict[str, Any]) -> dict[str, Any]:
    """The run's state at ``run.ctx.step`` (the trainer adds the meter, observers and best score)."""
    ctx = run.ctx
    weights: dict[str, Any] = {"model": ctx.model.state_dict()}
    if run.ema is not None:  # "model": what the run is used with; "training_model": what training continues from
        weights = {"model": run.ema.averaged_state(), "training_model": run.ema.trained_state()}
    return {
        "step": ctx.step,
        **weights,
        "optimizer": ctx.optimizer.state_dict(),
        "scheduler": ctx.scheduler.state_dict(),
        "scaler": ctx.scaler.state_dict() if ctx.scaler is not None else {},
        "strategy": strategy_state,
        "losses": ctx.losses.state_dict(),
        "masking": {role: p.state_dict() for role, p in ctx.masking.items()},
        "data": ctx.streams.state_dict(),
        "rng": capture_rng(ctx.mask_generator),
        "config": config_to_yaml(run.config),
        "prism_version": __version__,
        "dataset": run.reader.fingerprint,  # --resume refuses a cache that now holds other data
    }


def restore_run(run: Run, state: dict[str, Any], path: Path) -> None:
    """Put a loaded checkpoint's state back into ``run`` (``run.ctx.step`` included).

    Raises:
        CheckpointError: a part does not fit this run (one line naming the part and the config fields changed
            since the checkpoint was written).
    """
    if state.get("dataset", run.reader.fingerprint) != run.reader.fingerprint:
        raise CheckpointError(dataset_changed_message(path, state["dataset"], run.reader))
    ctx = run.ctx
    trained = "training_model" if "training_model" in state else "model"  # saved with train.ema, or without
    loaders = (
        (trained, lambda s: ctx.model.load_state_dict(s)),
        ("optimizer", ctx.optimizer.load_state_dict),
        ("scheduler", ctx.scheduler.load_state_dict),
        ("scaler", lambda s: ctx.scaler.load_state_dict(s) if ctx.scaler is not None and s else None),
        ("strategy", run.strategy.load_state_dict),
        ("losses", ctx.losses.load_state_dict),
        ("masking", lambda s: [p.load_state_dict(s.get(role, {})) for role, p in ctx.masking.items()]),
        ("data", ctx.streams.load_state_dict),
        ("rng", lambda s: restore_rng(s, ctx.mask_generator)),
    )
    for part, load in loaders:
        try:
            load(state[part])
        except (KeyError, RuntimeError, ValueError, TypeError) as exc:
            raise CheckpointError(mismatch_message(path, state, ctx.model.state_dict(), run.config, exc,
                                                   part)) from None
    ctx.step = int(state["step"])
    stretch_schedule(run.scheduler, run.config.train.steps)
    _restore_average(run, state, path)


def _restore_average(run: Run, state: dict[str, Any], path: Path) -> None:
    """The ``train.ema`` average: the checkpoint's ``model`` when it was saved with one, else started anew from
    the restored weights."""
    if run.ema is None:
        return
    if "training_model" not in state:
        run.ema.reset()
        logger.info("%s holds no weight average (written without train.ema): the average starts at step %d", path,
                    run.ctx.step)
        return
    try:
        run.ema.load_averaged_state(state["model"])
    except (KeyError, RuntimeError) as exc:
        raise CheckpointError(mismatch_message(path, state, run.ctx.model.state_dict(), run.config, exc,
                                               "model")) from None


def best_score(run_dir: Path, state: Mapping[str, Any]) -> float:
    """The best validation score of a run: its checkpoint's, or ``best.pt``'s when that was written later."""
    best = float(state.get("best_val", float("-inf")))
    path = run_dir / BEST_NAME
    if path.is_file():
        best = max(best, float(load_checkpoint(path).get("val_dice", float("-inf"))))
    return best


# ---- run folders ---------------------------------------------------------------------------------------------

def held_run(run_dir: Path) -> str | None:
    """What in ``run_dir`` shows it holds a run (``last.pt at step 30``, ``eval.json``), or None."""
    for name in RUN_MARKERS:
        path = run_dir / name
        if path.is_file():
            if name == CHECKPOINT_NAME:
                try:
                    return f"{name} at step {int(load_checkpoint(path)['step'])}"
                except (CheckpointError, KeyError, TypeError, ValueError):
                    return name
            return name
    return None


def refuse_existing_run(run_dir: Path, *, overwrite: bool) -> None:
    """Refuse to start a new run in a folder that holds one, unless ``overwrite`` (its files are then removed
    once the folder's lock is held).

    Raises:
        RunLockedError: another process is writing the folder (that comes first: it says more).
        ConfigError: the folder holds a run and ``overwrite`` is False (one line; nothing is changed).
    """
    found = held_run(run_dir)
    if found is None or overwrite:
        return
    if (run_dir / LOCK_NAME).is_file():
        RunLock(run_dir).acquire().release()  # raises if another live process writes the folder
    raise ConfigError(f"{run_dir}: holds a run ({found}); resume it (prism-train --resume {run_dir}), choose "
                      "another run folder, or overwrite it (--overwrite, Trainer(overwrite=True)), which removes "
                      "its files first")


def remove_run_files(run_dir: Path) -> list[str]:
    """Remove the files and folders prism wrote into ``run_dir`` (:data:`RUN_FILES`); other files stay.

    Returns:
        The names removed.
    """
    removed = []
    candidates = [run_dir / n for n in RUN_FILES] + sorted(run_dir.glob("train_log.csv.unreadable-*"))
    for path in candidates:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
        else:
            continue
        removed.append(path.name)
    return removed


# ---- the observer that writes last.pt -------------------------------------------------------------------------

class Checkpointer(Observer):
    """Writes ``last.pt`` every ``every`` steps, at the last step, and when an observer stopped the run early.

    The trainer checks the run's health before each write (:meth:`Trainer.save`), so a checkpoint never holds a
    state reached through a non-finite loss or gradient.
    """

    name = "checkpoint"
    order = 80

    def __init__(self, every: int) -> None:
        self.every = every

    def on_step_end(self, trainer: Trainer, parts: Mapping[str, Any]) -> None:
        step = trainer.ctx.step
        if step % self.every == 0 or step == trainer.end_step:
            trainer.save()

    def on_fit_end(self, trainer: Trainer, error: BaseException | None) -> None:
        if error is None and trainer.saved_step != trainer.ctx.step:  # stopped early by an observer
            trainer.save()
