"""prism-train: train a model from a config (the built-in demo data when no cache is given)."""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
import time
from pathlib import Path
from typing import Any

from ..config import build_config, load_yaml
from ..errors import ConfigError
from ..presets import list_presets, load_preset
from ..registry import get_registry
from .common import OneLineParser, case_progress, report_table, run_command, stdout_console

EPILOG = """\
examples:
  prism-train                                  train on the built-in synthetic demo data, then evaluate
  prism-train --strategy standard optim.lr=1e-3 train.steps=500
  prism-train --config my.yaml --data brats.h5 -o runs/brats
  prism-train --preset maml                    first-order MAML on the demo data
  prism-train --resume runs/standard-20261122-101500
  prism-train -o runs/brats --overwrite        start anew in a folder that holds a run (its files are removed)

Overrides are dotted config fields (see the config sections data, model, losses, masking, strategy, optim,
train, eval); values are read as YAML (1e-3, true, [64, 64, 64], null).
"""


def parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="prism-train", description="Train a segmentation model with a meta-strategy, then evaluate it on "
        "all modality combinations.", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("overrides", nargs="*", metavar="FIELD=VALUE", help="dotted config overrides")
    group = p.add_mutually_exclusive_group()
    group.add_argument("-c", "--config", type=Path, help="YAML config file (default: the built-in demo settings)")
    group.add_argument("-p", "--preset", help=f"a config shipped with prism: {', '.join(list_presets())}")
    p.add_argument("-s", "--strategy", help="meta-strategy (= strategy.name); see prism-plugins")
    p.add_argument("-d", "--data", type=Path, help="prism cache (.h5); default: the built-in synthetic dataset")
    p.add_argument("-o", "--output", type=Path, help="run folder (default: runs/<strategy>-<time>)")
    p.add_argument("--steps", type=int, help="training steps (= train.steps)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="= train.device")
    p.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue the run in RUN_DIR from last.pt")
    p.add_argument("--overwrite", action="store_true", help="start anew in an --output folder that holds a run, "
                   "removing that run's files first (without it such a folder is refused)")
    p.add_argument("--init-from", type=Path, metavar="RUN", help="start the backbone from a trained run's weights "
                   "(= model.init_from; e.g. for --strategy meta_transfer)")
    p.add_argument("--no-eval", action="store_true", help="skip the evaluation after training")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_intermixed_args(argv)  # FIELD=VALUE overrides may come before or after flags
    return run_command("prism-train", lambda: _train(args))


class EvaluationStopped(Exception):
    """A stop signal arrived while the finished run was being evaluated."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _train(args: argparse.Namespace) -> int:
    from ..engine.signals import StopSignals
    from ..runs import load_run_config

    overrides = list(args.overrides)
    for flag, field in ((args.strategy, "strategy.name"), (args.steps, "train.steps"),
                        (args.device, "train.device"), (args.data, "data.cache"),
                        (args.init_from.resolve() if args.init_from else None, "model.init_from")):
        if flag is not None:
            overrides.append(f"{field}={flag}")
    if args.resume is not None:
        given = [flag for flag, value in (("--output", args.output), ("--config", args.config),
                                          ("--preset", args.preset), ("--overwrite", args.overwrite or None))
                 if value is not None]
        if given:
            raise ConfigError(f"--resume continues the run folder with its own config; it cannot be combined "
                              f"with {', '.join(given)} (use FIELD=VALUE overrides, e.g. train.steps=N)")
        config = load_run_config(args.resume, overrides)
        run_dir = args.resume
    else:
        if args.preset:
            base, source = load_preset(args.preset), f"preset {args.preset}"
        elif args.config:
            base, source = load_yaml(args.config), str(args.config)
        else:
            base, source = None, "config"
        config = build_config(base, overrides, source=source)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        run_dir = args.output or config.output_dir or Path("runs") / f"{config.strategy.name}-{stamp}"
    get_registry().get("strategy", config.strategy.name, field_name="strategy.name")  # fail fast, one line
    console = stdout_console()
    if config.data.cache is None:
        from ..data_tools.demo import ensure_demo_cache

        cache, generated = ensure_demo_cache(config.data.synthetic)
        console.print(("generated" if generated else "using") + f" synthetic demo data: {cache}")
    else:
        cache = config.data.cache
    with StopSignals() as stop:  # one watcher from the build to the end of the evaluation: no unguarded gap
        return _run(args, config, Path(run_dir), cache, console, stop)


def _run(args: argparse.Namespace, config: Any, run_dir: Path, cache: Path, console: Any, stop: Any) -> int:
    from ..engine.signals import Preempted, exit_code_for
    from ..engine.trainer import Trainer

    # a progress bar on a terminal; otherwise one line per log interval, through the logging handler
    trainer = Trainer(config, Path(run_dir), cache_path=cache, resume=args.resume is not None,
                      console=console if console.is_terminal else None, overwrite=args.overwrite,
                      check_splits=() if args.no_eval else (config.eval.split,))
    if trainer.dist.is_main:
        console.print(f"run folder: {run_dir}  device: {trainer.device}  strategy: {config.strategy.name}  "
                      f"backbone: {config.model.name}  steps: {trainer.ctx.step}->{config.train.steps}"
                      + (f"  processes: {trainer.dist.world}" if trainer.dist.enabled else ""))
    clean = False  # the run ended as planned (done or stopped by a signal): ranks leave the group together
    try:
        try:
            trainer.fit(signals=stop)
        except Preempted as halted:
            clean = True
            if trainer.dist.is_main:
                print(f"prism-train: {halted}; checkpoint {halted.checkpoint} written; resume with: "
                      f"prism-train --resume {shlex.quote(str(Path(run_dir).resolve()))}", file=sys.stderr,
                      flush=True)
            return halted.exit_code
        report = None
        if not args.no_eval and trainer.dist.is_main:
            with case_progress(console, len(trainer.eval_cases())) as progress:
                def on_case(case_id: str) -> None:
                    progress(case_id)
                    if stop.received is not None:  # training is complete and saved: only the evaluation stops
                        raise EvaluationStopped(stop.received)

                try:
                    report = trainer.evaluate(on_case=on_case)
                except EvaluationStopped as halt:
                    clean = True
                    print(f"prism-train: stopped by {signal.Signals(halt.signum).name} during the evaluation; "
                          f"training is complete ({trainer.ctx.step} steps, {Path(run_dir) / 'last.pt'}); evaluate "
                          f"with: prism-eval {shlex.quote(str(Path(run_dir).resolve()))}", file=sys.stderr,
                          flush=True)
                    return exit_code_for(halt.signum)
        if report is not None:
            console.print(report_table(report, f"'{config.eval.split}' split, {len(report.case_ids)} cases"))
            console.print(f"report: {Path(run_dir) / 'eval.json'}, {Path(run_dir) / 'eval.md'}")
        clean = True
        return 0
    finally:  # the cache handle and the run folder's lock are released on every path, errors included
        trainer.close(synchronise=clean)

if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
