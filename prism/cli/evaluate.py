"""prism-eval: evaluate a trained run on every modality combination."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import report_table, run_command, stdout_console


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="prism-eval", description="Evaluate a run folder's last checkpoint: Dice per region for each of the "
        "15 modality combinations; writes eval.json and eval.md into the run folder.")
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a folder written by prism-train")
    p.add_argument("--split", help="cache split to evaluate (default: the run's eval.split)")
    p.add_argument("--data", type=Path, help="evaluate on this cache instead of the run's")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="= train.device")
    p.add_argument("--max-cases", type=int, help="evaluate only the first N cases of the split")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return run_command("prism-eval", lambda: _evaluate(args))


def _evaluate(args: argparse.Namespace) -> int:
    from ..engine.trainer import Trainer, load_run_config

    overrides = []
    for flag, field in ((args.split, "eval.split"), (args.device, "train.device"), (args.data, "data.cache"),
                        (args.max_cases, "eval.max_cases")):
        if flag is not None:
            overrides.append(f"{field}={flag}")
    config = load_run_config(args.run_dir, overrides)
    if config.data.cache is None:
        from ..data_tools.demo import ensure_demo_cache

        cache, _ = ensure_demo_cache(config.data.synthetic)
    else:
        cache = config.data.cache
    trainer = Trainer(config, args.run_dir, cache_path=cache, resume=True)
    report = trainer.evaluate()
    console = stdout_console()
    console.print(report_table(report, f"Dice (%) on '{config.eval.split}' ({len(report.case_ids)} cases)"))
    console.print(f"report: {args.run_dir / 'eval.json'}, {args.run_dir / 'eval.md'}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
