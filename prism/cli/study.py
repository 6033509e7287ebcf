"""prism-study: run a study (arms x seeds of ordinary prism runs) and report it with intervals over seeds."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import ConfigError
from .common import run_command, stdout_console

EPILOG = """\
examples:
  prism-study run studies/smoke.yaml -o s             every arm x seed, then s/report.md and its plots
  prism-study run studies/smoke.yaml -o s             again: finished runs are skipped, cut ones resumed
  prism-study run spec.yaml -o s --jobs 4             4 runs at once (one GPU each where there are several)
  prism-study run spec.yaml -o s --executor submitit --slurm-partition gpu --slurm-time 600
  prism-study report s                                rewrite the report from the runs' files

Each run is an ordinary prism run folder under STUDY_DIR/runs/ARM/seed-N (prism-eval and prism-predict work on it).
"""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="prism-study", description="Compare methods over seeds: run every arm x seed "
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
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return run_command("prism-study", lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    from ..study.report import write_study_report

    console = stdout_console()
    if args.command == "report":
        write_study_report(args.study_dir)
        console.print(f"report: {args.study_dir / 'report.md'}")
        return 0
    from ..study.runner import ExecutorOptions, run_study
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
    _, outcomes = run_study(spec, args.output, options=options, source=str(args.spec),
                            log=lambda text: console.print(text, highlight=False))
    failed = [o for o in outcomes if not o.ok]
    if not args.no_report:
        try:
            write_study_report(args.output, spec)
            console.print(f"report: {args.output / 'report.md'}")
        except Exception:
            if not failed:
                raise
    if failed:
        print(f"prism-study: {len(failed)} run(s) failed: " + "; ".join(
            f"{o.arm}/seed-{o.seed}: {o.error}" for o in failed) + " (tracebacks in each run's error.txt)",
            file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
