"""Where every run of a study stands: ``prism-study status STUDY_DIR`` and ``STUDY_DIR/status.json``.

States: ``finished`` (its evaluation scored its final checkpoint), ``queued`` / ``running`` (a Slurm job, with
its id), ``failed`` (the last attempt left ``error.txt``, or its job ended without a result), ``to evaluate``,
``to adapt``, ``to resume``, ``to start``. ``log`` points at what to read: ``error.txt`` of a failed run, else
the job's log.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .cluster import ACTIVE_STATES, read_job_record, slurm_states
from .run_state import ERROR_NAME, read_run_folder
from .spec import PlannedRun, StudySpec, load_spec, plan_runs


def load_study(study_dir: Path) -> StudySpec:
    """The spec a study folder was run with (``STUDY_DIR/study.yaml``). Raises ConfigError when it is none."""
    from .runner import SPEC_NAME

    path = Path(study_dir) / SPEC_NAME
    if not path.is_file():
        raise ConfigError(f"{study_dir}: not a study folder (no {SPEC_NAME}; make one with prism-study run)")
    return load_spec(path)


def run_statuses(spec: StudySpec, study_dir: Path, *, runs: list[PlannedRun] | None = None,
                 ask_slurm: bool = True) -> list[dict[str, Any]]:
    """One row per planned run: arm, seed, folder, state, step, steps, job (id or None), log (path or None).

    Args:
        spec: the study's spec.
        study_dir: the study folder.
        runs: the planned runs (None: planned from ``spec``).
        ask_slurm: ask ``squeue`` about recorded Slurm jobs (queued / running); False: only the folders.
    """
    from .runner import cache_path

    study_dir = Path(study_dir)
    runs = runs if runs is not None else plan_runs(spec, cache_path(spec, study_dir))
    records = {run.folder: read_job_record(study_dir / run.folder) for run in runs}
    slurm_ids = [r["job_id"] for r in records.values() if r and r.get("executor") == "slurm"]
    states = (slurm_states(slurm_ids) or {}) if ask_slurm and slurm_ids else {}
    rows = []
    for run in runs:
        folder = study_dir / run.folder
        where = read_run_folder(folder, run.config.train.steps, wants_adapt=run.adapt)
        record = records[run.folder]
        state, log = where.state, None
        job_state = states.get(record["job_id"], "").split("+")[0] if record else ""
        if state != "finished" and job_state in ACTIVE_STATES:
            state = "queued" if job_state == "PENDING" else "running"
        elif state != "finished" and where.failed:
            state, log = "failed", str(folder / ERROR_NAME)
        elif state != "finished" and record is not None and record.get("outcome") == "failed":
            state = "failed"  # its job ended without a result (killed, out of memory): the job's log says why
        if log is None and record is not None:
            log = record.get("stderr")
        rows.append({"arm": run.arm, "seed": run.seed, "folder": run.folder, "state": state, "step": where.step,
                     "steps": run.config.train.steps, "job": record["job_id"] if record else None, "log": log})
    return rows


def status_lines(rows: list[dict[str, Any]]) -> list[str]:
    """A plain table of :func:`run_statuses` rows (one line per run) and a count per state."""
    width = max([len(f"{r['arm']}/seed-{r['seed']}") for r in rows] + [3])
    lines = [f"{'run':<{width}}  {'state':<11}  {'step':>11}  {'job':<10}  log"]
    for r in rows:
        step = f"{'-' if r['step'] is None else r['step']}/{r['steps']}"
        lines.append(f"{r['arm'] + '/seed-' + str(r['seed']):<{width}}  {r['state']:<11}  {step:>11}  "
                     f"{r['job'] or '-':<10}  {r['log'] or '-'}")
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["state"]] = counts.get(r["state"], 0) + 1
    lines.append(", ".join(f"{n} {state}" for state, n in counts.items()))
    return lines


__all__ = ["load_study", "run_statuses", "status_lines"]
