"""Run a study: every arm x seed as an ordinary prism run (the Trainer), skipping finished runs, resuming cut ones.

Layout of a study folder::

    STUDY_DIR/study.yaml            the spec as run (validated, defaults filled in)
    STUDY_DIR/status.json           where every run stood when the last prism-study run ended
    STUDY_DIR/data/synthetic-*.h5   the generated cache (synthetic studies only)
    STUDY_DIR/runs/ARM/seed-N/      one prism run folder each (config.yaml, last.pt, train_log.csv, eval.*, adapt.*)
    STUDY_DIR/submitit/             submitit's job files and logs (executor submitit)
    STUDY_DIR/report.*              written by :func:`prism.study.report.write_study_report`

A run is finished when its ``eval.json`` scored its final checkpoint (:mod:`prism.study.run_state`), and
``adapt.json`` exists when its arm asks for adaptation; a folder with ``last.pt`` (or only ``config.yaml``) is
resumed (``prism-train --resume`` semantics), and a stale evaluation is redone; a folder whose ``config.yaml``
differs from the planned config is refused (the spec changed: use another study folder).

Runs go to one of three executors: in this process one at a time (``jobs=1``), local child processes
(``jobs>1``, :mod:`prism.study.workers`; one GPU each when several are visible, CPU threads shared out
otherwise), or submitit (``executor="submitit"``: Slurm, or submitit's local executor; :mod:`prism.study.cluster`),
one run per job.

Stopping: SIGTERM, SIGUSR1 or SIGINT to the study reaches every running run, which finishes its step, writes its
checkpoint and is reported "to resume" (never failed); no new run starts; the study returns with
:attr:`StudyRun.stopped_by` set, and running it again resumes those runs. Slurm jobs are not stopped with the
study: they go on, and a rerun waits for them.
"""

from __future__ import annotations

import json
import os
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..atomic import ensure_folder, write_text_atomic
from ..config import Config, config_to_yaml, load_yaml
from ..data.cache_format import settings_hash
from ..errors import ConfigError
from .cluster import ExecutorOptions, dispatch_submitit
from .run_state import ERROR_NAME, read_run_folder
from .spec import PlannedRun, StudySpec, plan_runs, spec_to_yaml

SPEC_NAME = "study.yaml"
STATUS_NAME = "status.json"


@dataclass(frozen=True)
class RunTask:
    """What one worker needs (picklable: the config travels as its YAML text)."""

    arm: str
    seed: int
    run_dir: str
    config_yaml: str
    cache: str
    resume: bool  # planned; the worker decides again from the folder (a requeued job finds a checkpoint)
    train: bool  # False: training and evaluation are done, only the adaptation curve is missing
    adapt: dict[str, Any] | None
    threads: int | None = None


@dataclass
class RunOutcome:
    """How one run ended in this call. ``preempted``: stopped by a signal after writing its checkpoint (or
    before it started): "to resume", not failed. ``error``: one line (the failure, or where the run stopped)."""

    arm: str
    seed: int
    ok: bool
    seconds: float
    error: str = ""
    preempted: bool = False


@dataclass
class StudyState:
    """Which planned runs are finished, to resume (or to evaluate again), or to start."""

    finished: list[PlannedRun] = field(default_factory=list)
    resume: list[PlannedRun] = field(default_factory=list)
    adapt_only: list[PlannedRun] = field(default_factory=list)
    fresh: list[PlannedRun] = field(default_factory=list)

    @property
    def todo(self) -> list[PlannedRun]:
        return [*self.adapt_only, *self.resume, *self.fresh]


@dataclass
class StudyRun:
    """What :func:`run_study` did.

    Attributes:
        state: the runs sorted by what was left to do before this call.
        outcomes: one per run started (or followed) in this call, in completion order.
        stopped_by: the signal that stopped the study (None: it ran to the end).
        jobs_left: Slurm jobs still queued or running when the study was stopped (they go on).
        statuses: where every run stands after the call (the rows of ``status.json``).
    """

    state: StudyState
    outcomes: list[RunOutcome]
    stopped_by: int | None = None
    jobs_left: list[str] = field(default_factory=list)
    statuses: list[dict[str, Any]] = field(default_factory=list)

    @property
    def failed(self) -> list[RunOutcome]:
        return [o for o in self.outcomes if not o.ok and not o.preempted]

    @property
    def preempted(self) -> list[RunOutcome]:
        return [o for o in self.outcomes if o.preempted]


def cache_path(spec: StudySpec, study_dir: Path) -> Path:
    """Where the study's cache is: ``data.cache``, or the synthetic one's path in the study folder (it may not
    exist yet: :func:`prepare_data` makes it)."""
    if spec.data.cache is not None:
        return spec.data.cache.resolve()
    syn = spec.data.synthetic
    assert syn is not None
    return (Path(study_dir) / "data" / f"synthetic-{settings_hash(syn.model_dump(mode='json'))}.h5").resolve()


def prepare_data(spec: StudySpec, study_dir: Path) -> Path:
    """The study's cache: ``data.cache``, or the synthetic one generated (once, atomically) into the study folder."""
    path = cache_path(spec, study_dir)
    if spec.data.cache is not None:
        if not spec.data.cache.is_file():
            raise ConfigError(f"data.cache: {spec.data.cache} not found")
        return path
    from ..data_tools.synthetic import SynthSettings, write_synthetic_cache

    syn = spec.data.synthetic
    assert syn is not None
    if not path.exists():
        ensure_folder(path.parent)
        write_synthetic_cache(str(path), SynthSettings(cases=syn.cases, shape=tuple(syn.shape), seed=syn.seed,
                                                       sites=syn.sites),
                              test_fraction=syn.test_fraction, val_fraction=syn.val_fraction,
                              hold_out_sites=[syn.hold_out_site] if syn.hold_out_site else (),
                              missing_rates=syn.missing_rates)
    return path


def _first_difference(a: Any, b: Any, prefix: str = "") -> str | None:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in list(a) + [k for k in b if k not in a]:
            found = _first_difference(a.get(key), b.get(key), f"{prefix}{key}.")
            if found:
                return found
        return None
    return None if a == b else prefix.rstrip(".")


def assess(runs: list[PlannedRun], study_dir: Path) -> StudyState:
    """Sort the planned runs by what is left to do. Raises ConfigError when a run folder holds another config."""
    state = StudyState()
    for run in runs:
        folder = study_dir / run.folder
        config_file = folder / "config.yaml"
        if config_file.is_file() and (folder / "last.pt").is_file():
            previous = load_yaml(config_file)
            planned = run.config.model_dump(mode="json")
            diff = _first_difference(planned, Config.model_validate(previous).model_dump(mode="json"))
            if diff:
                raise ConfigError(f"{folder}: was run with another config ({diff} differs from the spec); "
                                  f"use a new study folder or delete this run")
        where = read_run_folder(folder, run.config.train.steps, wants_adapt=run.adapt, read_step=False).state
        {"finished": state.finished, "to adapt": state.adapt_only, "to start": state.fresh}.get(
            where, state.resume).append(run)
    return state


class _Stopped(Exception):
    """A stop signal arrived during the evaluation or the adaptation curve (training is complete and saved)."""


def execute_run(task: RunTask, stop: Any = None) -> RunOutcome:
    """Train, evaluate and (optionally) adapt one run in this process; failures come back as an outcome.

    Args:
        task: the run.
        stop: a :class:`~prism.engine.signals.StopSignals` already watching this process (None: one is installed
            for the call). A signal makes the run write its checkpoint and return a ``preempted`` outcome.

    The run's console output goes to ``RUN/study.log``; an exception's traceback to ``RUN/error.txt``.
    """
    from ..engine.signals import Preempted, StopSignals

    if stop is None:
        with StopSignals() as own:
            return execute_run(task, own)
    import torch
    from rich.console import Console

    from ..config import build_config
    from ..engine.trainer import CHECKPOINT_NAME, Trainer

    t0 = time.perf_counter()

    def outcome(ok: bool, error: str = "", preempted: bool = False) -> RunOutcome:
        return RunOutcome(task.arm, task.seed, ok, time.perf_counter() - t0, error, preempted)

    def check_stop(*_: Any) -> None:
        if stop.received is not None:
            raise _Stopped

    run_dir = Path(task.run_dir)
    if stop.received is not None:
        return outcome(False, "stopped before it started", preempted=True)
    try:
        ensure_folder(run_dir)
        (run_dir / ERROR_NAME).unlink(missing_ok=True)
        if task.threads:
            torch.set_num_threads(task.threads)
        with open(run_dir / "study.log", "a") as log:
            console = Console(file=log, force_terminal=False, width=120)
            if task.train:
                import yaml

                config = build_config(yaml.safe_load(task.config_yaml), source=f"{run_dir}/config.yaml")
                resume = (run_dir / CHECKPOINT_NAME).is_file() or (run_dir / "config.yaml").is_file()
                trainer = Trainer(config, run_dir, cache_path=Path(task.cache), resume=resume, console=console)
                try:
                    trainer.fit(signals=stop)
                    trainer.evaluate(on_case=check_stop)  # eval.json records the checkpoint it scored
                finally:
                    trainer.close()
            if task.adapt is not None:
                from ..evaluation.adaptation_curve import run_adaptation_curve

                check_stop()
                run_adaptation_curve(run_dir, **task.adapt, on_step=check_stop)
        return outcome(True)
    except Preempted as halted:
        return outcome(False, str(halted), preempted=True)
    except _Stopped:
        return outcome(False, "stopped after training (the evaluation or adaptation is redone)", preempted=True)
    except Exception as exc:  # a failed run must not stop the others; its traceback is kept in its folder
        where = f" (traceback: {run_dir / ERROR_NAME})"
        try:
            write_text_atomic(run_dir / ERROR_NAME, traceback.format_exc())
        except Exception:  # the folder itself cannot be written: the one line below still says why
            where = ""
        first = " ".join(str(exc).split())[:200]
        return outcome(False, f"{type(exc).__name__}: {first}{where}")


def _visible_gpus() -> int:
    try:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:  # pragma: no cover - CUDA probing must never stop a CPU study
        return 0


def make_tasks(todo: list[PlannedRun], state: StudyState, spec: StudySpec, study_dir: Path, cache: Path,
               threads: int | None) -> list[RunTask]:
    adapt_only = {id(r) for r in state.adapt_only}
    resume = {id(r) for r in state.resume}
    tasks = []
    for run in todo:
        adapt = None
        if run.adapt and spec.adapt is not None:
            adapt = spec.adapt.model_dump(mode="python")
            adapt["patch_size"] = tuple(adapt["patch_size"]) if adapt["patch_size"] else None
        tasks.append(RunTask(arm=run.arm, seed=run.seed, run_dir=str((study_dir / run.folder).resolve()),
                             config_yaml=config_to_yaml(run.config), cache=str(cache), resume=id(run) in resume,
                             train=id(run) not in adapt_only, adapt=adapt, threads=threads))
    return tasks


def _died(task: RunTask, why: str) -> RunOutcome:
    return RunOutcome(task.arm, task.seed, False, 0.0, why)


def dispatch(tasks: list[RunTask], options: ExecutorOptions, study_dir: Path, on_done: Callable[[RunOutcome], None],
             *, stop: Any, log: Callable[[str], None] = print) -> tuple[list[RunOutcome], list[str]]:
    """Run ``tasks`` with the chosen executor, calling ``on_done`` as each finishes (in completion order).

    Returns:
        (outcomes, ids of Slurm jobs left queued or running when ``stop`` received a signal).
    """
    outcomes: list[RunOutcome] = []

    def done(outcome: RunOutcome) -> None:
        outcomes.append(outcome)
        on_done(outcome)

    left: list[str] = []
    if options.kind == "submitit":
        left = dispatch_submitit(tasks, options, study_dir, stop=stop, log=log, done=done, died=_died)
    elif options.jobs <= 1:
        for task in tasks:
            if stop.received is not None:
                break
            done(execute_run(task, stop))
    else:
        from .workers import run_in_processes

        run_in_processes(tasks, execute_run, jobs=options.jobs, gpus=_visible_gpus(), stop=stop, done=done,
                         died=_died)
    return outcomes, left


def check_synthetic_shape(spec: StudySpec, runs: list[PlannedRun]) -> None:
    """Every run's ``data.patch_size`` fits the synthetic volumes (checked before anything is generated).

    Raises:
        ConfigError: naming ``data.synthetic.shape`` and the first arm whose patch is larger.
    """
    syn = spec.data.synthetic
    if syn is None:
        return
    for run in runs:
        patch = list(run.config.data.patch_size)
        if any(p > s for p, s in zip(patch, syn.shape, strict=True)):
            raise ConfigError(f"data.synthetic.shape: {list(syn.shape)} is smaller than arm '{run.arm}''s "
                              f"data.patch_size {patch}; make the volumes at least as large as the patch")


def run_study(spec: StudySpec, study_dir: Path, *, options: ExecutorOptions = ExecutorOptions(),
              source: str = "study", log: Callable[[str], None] = print, stop: Any = None) -> StudyRun:
    """Plan, skip what is finished, run the rest, and say what happened.

    Args:
        spec: the validated spec.
        study_dir: the study folder (created).
        options: the executor.
        source: the spec's name in error messages.
        log: receives one line per event (plan, run finished/failed/stopped, job queued/running).
        stop: a :class:`~prism.engine.signals.StopSignals` already installed (the CLI's); None: one is installed
            for the call.

    Raises:
        ConfigError: a bad spec or arm config, or a run folder made with another config.
        StorageError: the study folder cannot be created or written.
    """
    from ..engine.signals import StopSignals

    if stop is None:
        with StopSignals() as own:
            return run_study(spec, study_dir, options=options, source=source, log=log, stop=own)
    study_dir = Path(study_dir)
    cache = cache_path(spec, study_dir)
    runs = plan_runs(spec, cache, source=source)  # every config checked before anything is written
    check_synthetic_shape(spec, runs)
    if spec.data.cache is not None and not spec.data.cache.is_file():
        raise ConfigError(f"data.cache: {spec.data.cache} not found")
    ensure_folder(study_dir)
    state = assess(runs, study_dir)
    write_text_atomic(study_dir / SPEC_NAME, spec_to_yaml(spec))
    prepare_data(spec, study_dir)
    total = len(runs)
    log(f"study '{spec.name}': {len(spec.arms)} arms x {len(spec.seeds)} seeds = {total} runs; "
        f"{len(state.finished)} finished, {len(state.resume)} to resume, {len(state.fresh)} to start"
        + (f", {len(state.adapt_only)} to adapt" if state.adapt_only else ""))
    threads = None
    if options.kind == "local" and options.jobs > 1 and _visible_gpus() <= 1:
        threads = max(1, (os.cpu_count() or 1) // options.jobs)
    tasks = make_tasks(state.todo, state, spec, study_dir, cache, threads)
    counter = {"done": len(state.finished)}

    def on_done(outcome: RunOutcome) -> None:
        name = f"{outcome.arm}/seed-{outcome.seed}"
        if outcome.preempted:
            log(f"{name} {outcome.error}")
            return
        counter["done"] += 1
        left = total - counter["done"]
        what = "finished" if outcome.ok else f"FAILED ({outcome.error})"
        took = f" in {outcome.seconds:.1f} s" if outcome.seconds else ""  # 0: a job that never reported back
        log(f"[{counter['done']}/{total} done, {left} left] {name} {what}{took}")

    outcomes, jobs_left = dispatch(tasks, options, study_dir, on_done, stop=stop, log=log) if tasks else ([], [])
    return StudyRun(state, outcomes, stop.received, jobs_left, write_status(spec, study_dir, runs))


def write_status(spec: StudySpec, study_dir: Path, runs: list[PlannedRun]) -> list[dict[str, Any]]:
    """Write ``STUDY_DIR/status.json``: where every run stands (rows of
    :func:`prism.study.status.run_statuses`, Slurm not asked); returns the rows."""
    from .status import run_statuses

    rows = run_statuses(spec, study_dir, runs=runs, ask_slurm=False)
    write_text_atomic(study_dir / STATUS_NAME, json.dumps({"study": spec.name, "runs": rows}, indent=2) + "\n")
    return rows


__all__ = ["ExecutorOptions", "RunOutcome", "RunTask", "StudyRun", "StudyState", "assess", "cache_path",
           "execute_run", "prepare_data", "run_study"]
