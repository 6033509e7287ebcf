"""Study runs as submitit jobs (Slurm, or submitit's local executor): submit, follow, re-attach, requeue.

Every run is one job. Its id is recorded in ``RUN/job.json`` (executor, job id, submitit folder, log files), so
``prism-study status`` can show it and a rerun of ``prism-study run`` waits for a job still queued or running
instead of submitting the run again.

The state of a Slurm job is read with ``squeue`` (it needs no accounting database); a job is over when its
result file exists or Slurm no longer lists it as pending or running. A job that ends without a result (killed,
cancelled, out of memory) is reported with the path of its log.

Preemption inside a job (:func:`execute_job`): SIGUSR2 (submitit's warning before the time limit) and SIGUSR1
(``--signal=USR1@N``) make the run write its checkpoint, then the job requeues itself (``scontrol requeue``) and
the requeued job resumes the run; SIGTERM (``scontrol requeue``, preemption, ``scancel``) makes the run write its
checkpoint and leaves the rest to Slurm. Either way the job exits without a result, so the study keeps waiting
for the same job id.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..atomic import ensure_folder, write_text_atomic
from ..errors import ConfigError

logger = logging.getLogger(__name__)

JOB_RECORD = "job.json"
#: Slurm states of a job that is not over yet (squeue's long names)
ACTIVE_STATES = frozenset({"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "REQUEUED", "REQUEUE_HOLD",
                           "REQUEUE_FED", "RESIZING", "SUSPENDED", "STOPPED", "SIGNALING", "STAGE_OUT",
                           "PREEMPTED", "RESV_DEL_HOLD", "SPECIAL_EXIT"})
#: states of a job stopped from outside (its run has a checkpoint to resume from)
STOPPED_STATES = frozenset({"CANCELLED", "PREEMPTED", "TIMEOUT", "NODE_FAIL", "DEADLINE", "BOOT_FAIL"})
#: after Slurm says a job is over, how long its result file may take to appear (shared file systems)
RESULT_GRACE_S = 10.0
#: the longest pause between two looks at the queue (seconds); the first looks come every 2 s
MAX_POLL_S = 30.0


@dataclass
class ExecutorOptions:
    """Where runs go: ``local`` (this machine, ``jobs`` at once) or ``submitit`` (``cluster``: slurm or local)."""

    kind: str = "local"
    jobs: int = 1
    cluster: str = "slurm"
    slurm: dict[str, Any] = field(default_factory=dict)  # submitit parameters (slurm_partition, timeout_min, ...)


# ---- inside the job ------------------------------------------------------------------------------------------
def execute_job(task: Any) -> Any:
    """The function submitit runs in a job: :func:`~prism.study.runner.execute_run` under a watcher of SIGTERM,
    SIGUSR1, SIGUSR2 and SIGINT. A preempted run on Slurm does not return (see the module docstring)."""
    from ..engine.signals import STOP_SIGNALS, StopSignals, exit_code_for
    from .runner import execute_run

    # the job's log (submitit's stderr file) shows prism's warnings: the library alone prints nothing
    handler = logging.StreamHandler(sys.stderr)
    handler.setLevel(logging.WARNING)
    handler.setFormatter(logging.Formatter("prism-study job: %(message)s"))
    logging.getLogger("prism").addHandler(handler)
    with StopSignals((*STOP_SIGNALS, signal.SIGUSR2)) as stop:
        outcome = execute_run(task, stop)
    if not (outcome.preempted and os.environ.get("SUBMITIT_EXECUTOR") == "slurm"):
        return outcome
    job = os.environ.get("SLURM_JOB_ID", "")
    if stop.received in (signal.SIGUSR1, signal.SIGUSR2) and job:
        # a warning before the time limit: ask for the job to run again, where it resumes the run. Slurm stops
        # the job's steps as soon as it takes the request, so the line is written first and the stop ignored.
        logger.warning("%s; requeue job %s", outcome.error, job)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        done = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            logger.warning("requeue job %s failed: %s", job, done.stderr.strip())
    raise SystemExit(exit_code_for(stop.received or signal.SIGTERM))  # no result: the study waits on


# ---- submitting and following --------------------------------------------------------------------------------
def make_executor(options: ExecutorOptions, folder: Path) -> Any:
    """A submitit executor writing its files under ``folder``. Raises ConfigError (extra missing, bad option)."""
    try:
        import submitit
    except ImportError:
        raise ConfigError("--executor submitit needs the optional extra: pip install 'prism-seg[study]'") from None
    if options.cluster == "local":
        executor: Any = submitit.LocalExecutor(folder=folder)
        executor.update_parameters(timeout_min=int(options.slurm.get("timeout_min", 60 * 24)))
        return executor
    executor = submitit.AutoExecutor(folder=folder, cluster=options.cluster)
    params = {"timeout_min": 60 * 24, "gpus_per_node": 1, "tasks_per_node": 1, **options.slurm}
    if not params["gpus_per_node"]:
        del params["gpus_per_node"]  # a CPU partition: ask for no GPU at all
    try:
        executor.update_parameters(**params)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"--slurm options: {exc}") from None
    return executor


def write_job_record(run_dir: Path, job: Any, executor: str) -> None:
    record = {"executor": executor, "job_id": str(job.job_id), "folder": str(job.paths.folder),
              "stdout": str(job.paths.stdout), "stderr": str(job.paths.stderr),
              "submitted": time.strftime("%Y-%m-%dT%H:%M:%S")}
    write_text_atomic(run_dir / JOB_RECORD, json.dumps(record, indent=2) + "\n")


def note_job_outcome(run_dir: Path, job_id: str, outcome: Any) -> None:
    """Add how the job ended to ``RUN/job.json`` (``finished``, ``stopped`` or ``failed`` with its one line), so
    ``prism-study status`` can say it after Slurm has forgotten the job."""
    record = read_job_record(run_dir)
    if record is None or record.get("job_id") != str(job_id):
        return
    record["outcome"] = "finished" if outcome.ok else "stopped" if outcome.preempted else "failed"
    record["error"] = outcome.error
    try:
        write_text_atomic(Path(run_dir) / JOB_RECORD, json.dumps(record, indent=2) + "\n")
    except Exception as exc:  # the outcome is still reported; only the note for later is lost
        logger.warning("%s: cannot note the job's outcome: %s", run_dir, exc)


def read_job_record(run_dir: Path) -> dict[str, Any] | None:
    try:
        record = json.loads((Path(run_dir) / JOB_RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and "job_id" in record else None


def slurm_states(job_ids: list[str]) -> dict[str, str] | None:
    """``{job id: state}`` for the jobs Slurm still lists (squeue; finished jobs stay listed for ``MinJobAge``);
    None when squeue cannot be asked."""
    if not job_ids:
        return {}
    cmd = ["squeue", "--noheader", "--states=all", "--format=%i %T", f"--jobs={','.join(job_ids)}"]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    if done.returncode != 0:
        if len(job_ids) > 1:  # one id Slurm has forgotten fails the whole call: ask one by one
            states: dict[str, str] = {}
            for job_id in job_ids:
                one = slurm_states([job_id])
                if one is None:
                    return None
                states.update(one)
            return states
        return {} if "Invalid job id" in done.stderr else None
    states = {}
    for line in done.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2:
            states[parts[0]] = parts[1]
    return states


@dataclass
class _Job:
    task: Any
    job: Any
    state: str = "SUBMITTED"
    over_since: float | None = None


class JobFollower:
    """Follow submitted jobs until each has an outcome; prints state changes through ``log``."""

    def __init__(self, cluster: str, log: Callable[[str], None], died: Callable[[Any, str], Any],
                 done: Callable[[Any], None]) -> None:
        self.cluster, self.log, self.died, self.done = cluster, log, died, done
        self.jobs: list[_Job] = []

    def add(self, task: Any, job: Any, note: str = "") -> None:
        self.jobs.append(_Job(task, job))
        self.log(f"{task.name}: job {job.job_id} {note or 'submitted'}")

    def _states(self) -> dict[str, str] | None:
        if self.cluster == "local":
            return {str(j.job.job_id): "RUNNING" if not j.job.done() else "ENDED" for j in self.jobs}
        return slurm_states([str(j.job.job_id) for j in self.jobs])

    def poll(self) -> None:
        """Look once: report state changes and the outcome of every job that is over."""
        states = self._states()
        now = time.monotonic()
        for entry in list(self.jobs):
            job = entry.job
            if job.paths.result_pickle.exists():
                self.jobs.remove(entry)
                self._finish(entry, self._result(entry))
                continue
            if states is None:
                continue
            state = states.get(str(job.job_id), "ENDED").split("+")[0]
            if state in ACTIVE_STATES:
                entry.over_since = None
                if state != entry.state and state in ("PENDING", "RUNNING"):
                    self.log(f"{entry.task.name}: job {job.job_id} "
                             f"{'queued' if state == 'PENDING' else 'running'}")
                entry.state = state
                continue
            entry.state = state
            if entry.over_since is None:
                entry.over_since = now
            if now - entry.over_since >= (RESULT_GRACE_S if self.cluster != "local" else 0.0):
                self.jobs.remove(entry)
                self._finish(entry, self._ended_without_result(entry))

    def _finish(self, entry: _Job, outcome: Any) -> None:
        note_job_outcome(Path(entry.task.run_dir), str(entry.job.job_id), outcome)
        self.done(outcome)

    def _result(self, entry: _Job) -> Any:
        try:
            return entry.job.result()
        except Exception as exc:  # the job's own wrapper failed (e.g. unpickling): say where its log is
            first = " ".join(str(exc).split())[:160]
            return self.died(entry.task, f"job {entry.job.job_id} failed: {first}; its log: {entry.job.paths.stderr}")

    def _ended_without_result(self, entry: _Job) -> Any:
        job, state = entry.job, entry.state
        stopped = state in STOPPED_STATES
        why = f"job {job.job_id} ended " + (f"{state} " if state != "ENDED" else "") + "without a result"
        outcome = self.died(entry.task, f"{why}; its log: {job.paths.stderr}")
        if stopped and (Path(entry.task.run_dir) / "last.pt").is_file():
            outcome.preempted = True  # stopped from outside after a checkpoint: to resume
        return outcome

    def wait(self, stop: Any) -> bool:
        """Poll until every job has its outcome (True) or ``stop`` receives a signal (False)."""
        start = time.monotonic()
        while self.jobs:
            if stop.received is not None:
                return False
            self.poll()
            if self.jobs:
                pause = min(MAX_POLL_S, 2.0 + (time.monotonic() - start) / 20)
                deadline = time.monotonic() + pause
                while time.monotonic() < deadline and stop.received is None:
                    time.sleep(0.2)
        return True

    def interrupt_local(self) -> None:
        """Local executor only: pass SIGTERM to every job still running (their runs write checkpoints) and wait
        for their outcomes."""
        for entry in self.jobs:
            process = getattr(entry.job, "_process", None)
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
        while self.jobs:
            self.poll()
            time.sleep(0.2)


def attach(task: Any, cluster: str, log: Callable[[str], None]) -> Any | None:
    """The job of an earlier ``prism-study run`` still queued or running for this run (Slurm only), else None."""
    if cluster == "local":
        return None
    record = read_job_record(Path(task.run_dir))
    if record is None or record.get("executor") != "slurm":
        return None
    states = slurm_states([record["job_id"]])
    if not states or states.get(record["job_id"], "").split("+")[0] not in ACTIVE_STATES:
        return None
    from submitit.slurm.slurm import SlurmJob

    return SlurmJob(folder=record["folder"], job_id=record["job_id"])


def dispatch_submitit(tasks: list[Any], options: ExecutorOptions, study_dir: Path, *, stop: Any,
                      log: Callable[[str], None], done: Callable[[Any], None],
                      died: Callable[[Any, str], Any]) -> list[str]:
    """Submit (or re-attach to) one job per task and follow them to the end.

    Returns:
        The ids of jobs left queued or running on the cluster when ``stop`` received a signal (empty otherwise;
        jobs of the local executor are stopped with their study instead).
    """
    executor = make_executor(options, study_dir / "submitit")
    follower = JobFollower(options.cluster, log, died, done)
    for task in tasks:
        if stop.received is not None:
            break
        job = attach(task, options.cluster, log)
        if job is not None:
            follower.add(task, job, "still queued or running: waiting for it")
            continue
        job = executor.submit(execute_job, task)
        write_job_record(ensure_folder(task.run_dir), job, options.cluster)
        follower.add(task, job)
    if follower.wait(stop):
        return []
    if options.cluster == "local":
        follower.interrupt_local()
        return []
    return [str(entry.job.job_id) for entry in follower.jobs]


def cancel_hint(job_ids: list[str]) -> str:
    return "scancel " + " ".join(shlex.quote(j) for j in job_ids)


__all__ = ["ExecutorOptions", "JobFollower", "dispatch_submitit", "execute_job", "read_job_record",
           "slurm_states"]
