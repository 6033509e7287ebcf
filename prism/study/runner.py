"""Run a study: every arm x seed as an ordinary prism run (the Trainer), skipping finished runs, resuming cut ones.

Layout of a study folder::

    STUDY_DIR/study.yaml            the spec as run (validated, defaults filled in)
    STUDY_DIR/data/synthetic-*.h5   the generated cache (synthetic studies only)
    STUDY_DIR/runs/ARM/seed-N/      one prism run folder each (config.yaml, last.pt, train_log.csv, eval.*, adapt.*)
    STUDY_DIR/report.*              written by :func:`prism.study.report.write_study_report`

A run is finished when its folder has ``eval.json`` (and ``adapt.json`` when its arm asks for adaptation); a
folder with ``last.pt`` but no ``eval.json`` is resumed (``prism-train --resume`` semantics); a folder whose
``config.yaml`` differs from the planned config is refused (the spec changed: use another study folder).

Runs go to one of three executors: in this process one at a time (``jobs=1``), a local process pool
(``jobs>1``; one GPU per process when several are visible, CPU threads shared out otherwise), or submitit
(``executor="submitit"``: Slurm, or submitit's local executor), one run per job.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..atomic import write_text_atomic
from ..config import Config, config_to_yaml, load_yaml
from ..data.cache_format import settings_hash
from ..errors import ConfigError
from .spec import PlannedRun, StudySpec, plan_runs, spec_to_yaml

SPEC_NAME = "study.yaml"


@dataclass(frozen=True)
class RunTask:
    """What one worker needs (picklable: the config travels as its YAML text)."""

    arm: str
    seed: int
    run_dir: str
    config_yaml: str
    cache: str
    resume: bool
    train: bool  # False: training and evaluation are done, only the adaptation curve is missing
    adapt: dict[str, Any] | None
    threads: int | None = None


@dataclass
class RunOutcome:
    arm: str
    seed: int
    ok: bool
    seconds: float
    error: str = ""


@dataclass
class StudyState:
    """Which planned runs are finished, to resume, or to start."""

    finished: list[PlannedRun] = field(default_factory=list)
    resume: list[PlannedRun] = field(default_factory=list)
    adapt_only: list[PlannedRun] = field(default_factory=list)
    fresh: list[PlannedRun] = field(default_factory=list)

    @property
    def todo(self) -> list[PlannedRun]:
        return [*self.adapt_only, *self.resume, *self.fresh]


def prepare_data(spec: StudySpec, study_dir: Path) -> Path:
    """The study's cache: ``data.cache``, or the synthetic one generated (once, atomically) into the study folder."""
    if spec.data.cache is not None:
        if not spec.data.cache.is_file():
            raise ConfigError(f"data.cache: {spec.data.cache} not found")
        return spec.data.cache.resolve()
    from ..data_tools.synthetic import SynthSettings, write_synthetic_cache

    syn = spec.data.synthetic
    assert syn is not None
    path = (study_dir / "data" / f"synthetic-{settings_hash(syn.model_dump(mode='json'))}.h5").resolve()
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
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
        if (folder / "eval.json").is_file():
            if run.adapt and not (folder / "adapt.json").is_file():
                state.adapt_only.append(run)
            else:
                state.finished.append(run)
        elif (folder / "last.pt").is_file():
            state.resume.append(run)
        else:
            state.fresh.append(run)
    return state


def execute_run(task: RunTask) -> RunOutcome:
    """Train, evaluate and (optionally) adapt one run in this process; failures come back as an outcome.

    The run's console output goes to ``RUN/study.log``; an exception's traceback to ``RUN/error.txt``.
    """
    import torch
    from rich.console import Console

    from ..config import build_config
    from ..engine.trainer import Trainer

    t0 = time.perf_counter()
    run_dir = Path(task.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "error.txt").unlink(missing_ok=True)
    if task.threads:
        torch.set_num_threads(task.threads)
    try:
        with open(run_dir / "study.log", "a") as log:
            console = Console(file=log, force_terminal=False, width=120)
            if task.train:
                import yaml

                config = build_config(yaml.safe_load(task.config_yaml), source=f"{run_dir}/config.yaml")
                trainer = Trainer(config, run_dir, cache_path=Path(task.cache), resume=task.resume, console=console)
                try:
                    trainer.fit()
                    trainer.evaluate()
                finally:
                    trainer.close()
            if task.adapt is not None:
                from ..evaluation.adaptation_curve import run_adaptation_curve

                run_adaptation_curve(run_dir, **task.adapt)
        return RunOutcome(task.arm, task.seed, True, time.perf_counter() - t0)
    except Exception as exc:  # a failed run must not stop the others; its traceback is kept in its folder
        write_text_atomic(run_dir / "error.txt", traceback.format_exc())
        first = " ".join(str(exc).split())[:200]
        return RunOutcome(task.arm, task.seed, False, time.perf_counter() - t0, f"{type(exc).__name__}: {first}")


def _gpu_worker_init(queue: Any) -> None:
    """Pool initializer: take one GPU id for the life of this worker process (before CUDA starts)."""
    os.environ["CUDA_VISIBLE_DEVICES"] = str(queue.get())


def _visible_gpus() -> int:
    try:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:  # pragma: no cover - CUDA probing must never stop a CPU study
        return 0


@dataclass
class ExecutorOptions:
    """Where runs go: ``local`` (this machine, ``jobs`` at once) or ``submitit`` (``cluster``: slurm or local)."""

    kind: str = "local"
    jobs: int = 1
    cluster: str = "slurm"
    slurm: dict[str, Any] = field(default_factory=dict)  # submitit parameters (slurm_partition, timeout_min, ...)


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


def dispatch(tasks: list[RunTask], options: ExecutorOptions, study_dir: Path,
             on_done: Callable[[RunOutcome], None]) -> list[RunOutcome]:
    """Run ``tasks`` with the chosen executor, calling ``on_done`` as each finishes (in completion order)."""
    outcomes: list[RunOutcome] = []

    def done(outcome: RunOutcome) -> None:
        outcomes.append(outcome)
        on_done(outcome)

    if options.kind == "submitit":
        _dispatch_submitit(tasks, options, study_dir, done)
    elif options.jobs <= 1:
        for task in tasks:
            done(execute_run(task))
    else:
        gpus = _visible_gpus()
        ctx = multiprocessing.get_context("spawn")
        kwargs: dict[str, Any] = {}
        if gpus > 1:
            queue = ctx.Queue()
            for g in range(gpus):
                queue.put(g)
            kwargs = {"initializer": _gpu_worker_init, "initargs": (queue,)}
        workers = min(options.jobs, len(tasks), gpus) if gpus > 1 else min(options.jobs, len(tasks))
        with cf.ProcessPoolExecutor(max_workers=max(workers, 1), mp_context=ctx, **kwargs) as pool:
            futures = [pool.submit(execute_run, t) for t in tasks]
            for fut in cf.as_completed(futures):
                done(fut.result())
    return outcomes


def _dispatch_submitit(tasks: list[RunTask], options: ExecutorOptions, study_dir: Path,
                       done: Callable[[RunOutcome], None]) -> None:
    try:
        import submitit
    except ImportError:
        raise ConfigError("--executor submitit needs the optional extra: pip install 'prism-seg[study]'") from None
    folder = study_dir / "submitit"
    if options.cluster == "local":
        executor: Any = submitit.LocalExecutor(folder=folder)
        executor.update_parameters(timeout_min=int(options.slurm.get("timeout_min", 60 * 24)))
    else:
        executor = submitit.AutoExecutor(folder=folder, cluster=options.cluster)
        params = {"timeout_min": 60 * 24, "gpus_per_node": 1, "tasks_per_node": 1, **options.slurm}
        try:
            executor.update_parameters(**params)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"--slurm options: {exc}") from None
    jobs = [executor.submit(execute_run, t) for t in tasks]
    pending = dict(enumerate(jobs))
    while pending:
        for i, job in list(pending.items()):
            if job.done():
                del pending[i]
                try:
                    done(job.result())
                except Exception as exc:  # the job itself died (killed, out of memory): say so, go on
                    t = tasks[i]
                    done(RunOutcome(t.arm, t.seed, False, 0.0, f"submitit job {job.job_id}: "
                                    + " ".join(str(exc).split())[:200]))
        if pending:
            time.sleep(1.0)


def run_study(spec: StudySpec, study_dir: Path, *, options: ExecutorOptions = ExecutorOptions(),
              source: str = "study", log: Callable[[str], None] = print) -> tuple[StudyState, list[RunOutcome]]:
    """Plan, skip what is finished, run the rest, and return (state before running, outcomes of this call).

    Raises:
        ConfigError: a bad spec or arm config, or a run folder made with another config.
    """
    study_dir = Path(study_dir)
    study_dir.mkdir(parents=True, exist_ok=True)
    cache = prepare_data(spec, study_dir)
    runs = plan_runs(spec, cache, source=source)
    state = assess(runs, study_dir)
    write_text_atomic(study_dir / SPEC_NAME, spec_to_yaml(spec))
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
        counter["done"] += 1
        left = total - counter["done"]
        what = "finished" if outcome.ok else f"FAILED ({outcome.error})"
        log(f"[{counter['done']}/{total} done, {left} left] {outcome.arm}/seed-{outcome.seed} {what} "
            f"in {outcome.seconds:.1f} s")

    outcomes = dispatch(tasks, options, study_dir, on_done) if tasks else []
    return state, outcomes
