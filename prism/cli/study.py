"""prism-study: run a study (arms x seeds of ordinary prism runs) and report it with intervals over seeds."""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .common import OneLineParser, run_command, stdout_console

EPILOG = """\
examples:
  prism-study run studies/smoke.yaml -o s             every arm x seed, then s/report.md and its plots
  prism-study run studies/smoke.yaml -o s             again: finished runs are skipped, cut ones resumed
  prism-study run spec.yaml -o s --jobs 4             4 runs at once (one GPU each where there are several)
  prism-study run spec.yaml -o s --executor submitit --slurm-partition gpu --slurm-time 600
  prism-study status s                                every run: finished, queued, running, failed, to resume ...
  prism-study report s                                rewrite the report from the runs' files

Each run is an ordinary prism run folder under STUDY_DIR/runs/ARM/seed-N (prism-eval and prism-predict work on it).
SIGTERM, SIGUSR1 or Ctrl-C stops the study: every running run writes its checkpoint, the command prints how to
resume and exits with 143 (130 for Ctrl-C); running it again resumes those runs. Slurm jobs go on without it.
"""


def parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="prism-study", description="Compare methods over seeds: run every arm x seed "
                                "of a study spec as a prism run, then report means, sds and paired intervals.",
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    r = sub.add_parser("run", help="run (or continue) a study, then write its report")
    r.add_argument("spec", type=Path, metavar="SPEC.yaml", help="the study spec")
    r.add_argument("-o", "--output", type=Path, required=True, metavar="STUDY_DIR", help="the study folder")
    r.add_argument("-j", "--jobs", type=int, default=1, help="runs at once on this machine (default 1)")
    r.add_argument("--executor", choices=("local", "submitit"), default="local",
                   help="local processes (default) or submitit (pip install 'prism-seg[study]')")
    r.add_argument("--submitit-cluster", choices=("slurm", "local"), default="slurm",
                   help="submitit backend (default slurm; 'local' runs the jobs as local processes)")
    r.add_argument("--slurm-partition", help="Slurm partition")
    r.add_argument("--slurm-time", type=int, metavar="MIN", help="time limit per run in minutes (default 1440)")
    r.add_argument("--slurm-gpus", type=int, metavar="N", help="GPUs per run (default 1)")
    r.add_argument("--slurm-cpus", type=int, metavar="N", help="CPUs per run")
    r.add_argument("--slurm-mem-gb", type=int, metavar="GB", help="memory per run")
    r.add_argument("--slurm-account", help="Slurm account")
    r.add_argument("--no-report", action="store_true", help="do not write the report at the end")
    rep = sub.add_parser("report", help="(re)write a study's report from its run folders")
    rep.add_argument("study_dir", type=Path, metavar="STUDY_DIR")
    st = sub.add_parser("status", help="where every run stands (with its Slurm job id and log)")
    st.add_argument("study_dir", type=Path, metavar="STUDY_DIR")
    st.add_argument("--json", action="store_true", help="print the rows as JSON")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(argv)
    return run_command("prism-study", lambda: _run(args, argv))


def _run(args: argparse.Namespace, argv: list[str]) -> int:
    from ..study.report import write_study_report

    console = stdout_console()
    if args.command == "report":
        write_study_report(args.study_dir)
        console.print(f"report: {args.study_dir / 'report.md'}")
        return 0
    if args.command == "status":
        return _status(args, console)
    from ..engine.signals import StopSignals

    with StopSignals() as stop:  # from the first check to the report: a signal is never left unanswered
        return _run_study(args, argv, console, stop)


def _status(args: argparse.Namespace, console: Any) -> int:
    import json

    from ..study.status import load_study, run_statuses, status_lines

    rows = run_statuses(load_study(args.study_dir), args.study_dir)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for line in status_lines(rows):
            console.print(line, highlight=False, markup=False)
    return 0


def _run_study(args: argparse.Namespace, argv: list[str], console: Any, stop: Any) -> int:
    from ..engine.signals import exit_code_for
    from ..study.report import write_study_report
    from ..study.runner import STATUS_NAME, ExecutorOptions, run_study
    from ..study.spec import load_spec

    if args.jobs < 1:
        raise ConfigError(f"--jobs must be >= 1, got {args.jobs}")
    slurm = {key: value for key, value in (
        ("slurm_partition", args.slurm_partition), ("timeout_min", args.slurm_time),
        ("gpus_per_node", args.slurm_gpus), ("cpus_per_task", args.slurm_cpus), ("mem_gb", args.slurm_mem_gb),
        ("slurm_account", args.slurm_account)) if value is not None}
    if slurm and args.executor != "submitit":
        raise ConfigError("--slurm-* options need --executor submitit")
    spec = load_spec(args.spec)
    options = ExecutorOptions(kind=args.executor, jobs=args.jobs, cluster=args.submitit_cluster, slurm=slurm)
    done = run_study(spec, args.output, options=options, source=str(args.spec), stop=stop,
                     log=lambda text: console.print(text, highlight=False, markup=False))
    if done.stopped_by is not None:
        print(f"prism-study: stopped by {signal.Signals(done.stopped_by).name}; {_stop_summary(done)}; state in "
              f"{args.output / STATUS_NAME}; resume with: " + shlex.join(["prism-study", *argv]),
              file=sys.stderr, flush=True)
        return exit_code_for(done.stopped_by)
    failed = done.failed
    if not args.no_report:
        try:
            write_study_report(args.output, spec)
            console.print(f"report: {args.output / 'report.md'}")
        except Exception:
            if not failed:
                raise
    if failed:
        print(f"prism-study: {len(failed)} run(s) failed: " + "; ".join(
            f"{o.arm}/seed-{o.seed}: {o.error}" for o in failed),
            file=sys.stderr)
        return 1
    return 0


def _stop_summary(done: Any) -> str:
    """``2 to resume (a/seed-0, b/seed-1), 1 to start, 1 finished`` (+ the Slurm jobs that go on)."""
    by_state: dict[str, list[str]] = {}
    for row in done.statuses:
        by_state.setdefault(row["state"], []).append(f"{row['arm']}/seed-{row['seed']}")
    parts = [f"{len(names)} {state}" + (f" ({', '.join(names)})" if state == "to resume" else "")
             for state, names in by_state.items()]
    if done.jobs_left:
        parts.append(f"Slurm job(s) {', '.join(done.jobs_left)} still queued or running (followed again by the same "
                     "command)")
    return ", ".join(parts)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
