"""prism-eval: evaluate a trained run on every modality combination, or compare two evaluated runs."""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console

from .common import OneLineParser, case_progress, report_table, run_command, stdout_console

if TYPE_CHECKING:
    from ..runs import TrainedRun

# ---- flag types: a bad value is one argparse line naming the flag (exit 2), before anything is loaded ----------

def _int_at_least(low: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value
    parse.__name__ = "int"
    return parse


def _finite_float(low: float, high: float = math.inf, *, low_open: bool = False, high_open: bool = True
                  ) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid float value: {text!r}") from None
        above = value > low if low_open else value >= low
        below = value < high if high_open else value <= high
        if not (math.isfinite(value) and above and below):
            left, right = "(" if low_open else "[", ")" if high_open or math.isinf(high) else "]"
            raise argparse.ArgumentTypeError(f"must be a finite number in {left}{low:g}, {high:g}{right}, got {text}")
        return value
    parse.__name__ = "float"
    return parse


def _hd95_empty(text: str) -> float | str:
    """``convention`` (the convention's value), ``nan`` -> NaN (left out), else a finite number >= 0."""
    if text == "convention":
        return text
    if text.lower() == "nan":
        return math.nan
    return _finite_float(0.0)(text)


COUNT = _int_at_least(0)
POSITIVE = _int_at_least(1)
LR = _finite_float(0.0, low_open=True)

EPILOG = """\
examples:
  prism-eval runs/standard-20261122-101500
  prism-eval RUN --window 128 128 128 --overlap 0.5 --et-postprocess 500
  prism-eval RUN --tta mirror                 test-time mirroring: mean probabilities of the 8 flips
  prism-eval --ensemble runs/fold0 runs/fold1 runs/fold2 -o ens   the runs' mean probabilities, report in ens/
  prism-eval RUN --adapt-site site2 --adapt-cases 3 --adapt-steps 20
  prism-eval compare RUN_A RUN_B              differences B - A with bootstrap 95% intervals over cases
  prism-eval adapt RUN --site site3 --steps 0,1,5,20 --support 2 --draws 5   adaptation curve (adapt.*)
  prism-eval fewshot RUN --shots 1,5 --steps 10 --baseline STANDARD_RUN        few-shot Dice (fewshot.*)

Writes eval.json (summary and per-case values), eval_cases.csv, eval.md (the table papers use) and
eval_dice.png into the run folder (or -o DIR). Options left out come from the run's eval config section; for an
ensemble, from the first run's (the runs must share modalities, classes and label map; the cases are the first
run's eval.split of the first run's cache, or --data).
"""


def _from_run(field: str, value: object) -> str:
    """A help text's default: the run's ``eval.<field>``, and the config's own default for it."""
    shown = "none" if value is None else f"{value:g}" if isinstance(value, float) else str(value)
    return f"default: the run's eval.{field}, {shown} unless set"


def add_inference_flags(p: argparse.ArgumentParser) -> None:
    """The flags that change how a run predicts (``prism-eval`` and ``prism-predict``): sliding windows and
    test-time augmentation, each defaulting to the run's ``eval`` field (see :func:`inference_changes`)."""
    from ..evaluation.options import DEFAULTS
    from ..evaluation.tta import TTA_MODES

    window = "the whole volume at once" if DEFAULTS.window is None else " ".join(map(str, DEFAULTS.window))
    p.add_argument("--window", type=POSITIVE, nargs=3, metavar=("D", "H", "W"),
                   help=f"sliding-window size, at most the volume's (default: the run's eval.window, {window} "
                   "unless set)")
    p.add_argument("--overlap", type=_finite_float(0.0, 1.0),
                   help=f"sliding-window overlap in [0, 1) ({_from_run('overlap', DEFAULTS.overlap)})")
    p.add_argument("--sw-batch-size", type=POSITIVE, help="windows per forward pass (>= 1), each run for every "
                   f"combination ({_from_run('sw_batch_size', DEFAULTS.sw_batch_size)})")
    p.add_argument("--tta", choices=TTA_MODES, help="test-time augmentation: mirror = mean probabilities of the 8 "
                   f"flips ({_from_run('tta', DEFAULTS.tta)})")


def inference_changes(args: argparse.Namespace) -> dict[str, object]:
    """The ``eval`` fields the flags of :func:`add_inference_flags` set (those given)."""
    given = {"window": args.window, "overlap": args.overlap, "sw_batch_size": args.sw_batch_size, "tta": args.tta}
    return {field: value for field, value in given.items() if value is not None}


def parser() -> argparse.ArgumentParser:
    from ..config import EvalConfig
    from ..evaluation.options import DEFAULTS, HD95_CONVENTIONS, convention_empty_hd95

    p = OneLineParser(
        prog="prism-eval", description="Evaluate a run folder's last checkpoint: Dice and HD95 per region for each "
        "of the 15 modality combinations, or 'prism-eval compare RUN_A RUN_B'.", epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", type=Path, nargs="?", metavar="RUN_DIR", help="a folder written by prism-train")
    p.add_argument("--ensemble", type=Path, nargs="+", metavar="RUN",
                   help="evaluate these runs as one model, their softmax probabilities averaged (instead of RUN_DIR; "
                   "needs -o; no fast adaptation)")
    p.add_argument("-o", "--output", type=Path, metavar="DIR",
                   help="where eval.* go (default: RUN_DIR; required with --ensemble)")
    p.add_argument("--split", help="cache split to evaluate (default: the run's eval.split)")
    p.add_argument("--data", type=Path, help="evaluate on this cache instead of the run's")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="= train.device")
    p.add_argument("--max-cases", type=POSITIVE, help="evaluate only the first N cases of the split")
    add_inference_flags(p)
    p.add_argument("--et-postprocess", type=COUNT, metavar="VOXELS", help="fewer predicted ET voxels count as none "
                   f"(BraTS: 500; 0 = off; {_from_run('et_postprocess_voxels', DEFAULTS.et_postprocess_voxels)})")
    p.add_argument("--no-hd95", action="store_true", help="skip HD95 (Dice only)")
    p.add_argument("--hd95", choices=HD95_CONVENTIONS, dest="hd95_convention",
                   help="whose HD95: MONAI's compute_hausdorff_distance (monai) or the BraTS 2023 challenge code's "
                   f"surface-area-weighted one (brats2023) ({_from_run('hd95_convention', DEFAULTS.hd95_convention)})")
    d = EvalConfig()
    values = ", ".join(f"{c} {convention_empty_hd95(c):.2f}" for c in HD95_CONVENTIONS)
    p.add_argument("--hd95-empty", type=_hd95_empty, metavar="MM",
                   help=f"HD95 when exactly one of prediction and reference is empty: 'convention' ({values}), a "
                   f"number of mm, or 'nan' (left out of the means) ({_from_run('hd95_empty', d.hd95_empty)})")
    p.add_argument("--no-heatmap", action="store_true", help="do not write eval_dice.png")
    adapt = p.add_argument_group("fast adaptation (evaluate a held-out site before and after adapting to it: the "
                                 "run's own rule, or fine-tuning for strategies without one)")
    adapt.add_argument("--adapt-site", metavar="SITE", help="the site to adapt to (cases' site attribute; "
                       f"{_from_run('adapt_site', d.adapt_site)})")
    adapt.add_argument("--adapt-cases", type=POSITIVE, metavar="N",
                       help=f"support cases taken from the site ({_from_run('adapt_cases', d.adapt_cases)})")
    adapt.add_argument("--adapt-steps", type=COUNT, metavar="K",
                       help=f"adaptation steps ({_from_run('adapt_steps', d.adapt_steps)})")
    adapt.add_argument("--adapt-lr", type=LR, help="fine-tuning learning rate, finite and > 0 (strategies with a "
                       f"rule of their own keep their step size; {_from_run('adapt_lr', d.adapt_lr)})")
    adapt.add_argument("--adapt-patch", type=POSITIVE, nargs=3, metavar=("D", "H", "W"),
                       help=f"adaptation patch size ({_from_run('adapt_patch_size', d.adapt_patch_size)}: whole "
                       "volumes)")
    return p


def eval_changes(args: argparse.Namespace) -> dict[str, object]:
    """The ``eval`` fields the flags of :func:`parser` set (those given), to apply over the run's section."""
    changes = inference_changes(args)
    given = {"split": args.split, "max_cases": args.max_cases, "et_postprocess_voxels": args.et_postprocess,
             "hd95_convention": args.hd95_convention, "adapt_site": args.adapt_site, "adapt_cases": args.adapt_cases,
             "adapt_steps": args.adapt_steps, "adapt_lr": args.adapt_lr, "adapt_patch_size": args.adapt_patch}
    changes.update({field: value for field, value in given.items() if value is not None})
    if args.no_hd95:
        changes["hd95"] = False
    if args.hd95_empty is not None:  # 'nan' leaves such pairs out: the config's null
        changes["hd95_empty"] = None if isinstance(args.hd95_empty, float) and math.isnan(args.hd95_empty) \
            else args.hd95_empty
    return changes


def compare_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="prism-eval compare", description="Per-region differences B - A between two evaluated runs (Dice in "
        "percentage points, HD95 in mm), averaged over combinations, with paired bootstrap confidence intervals "
        "over the cases both runs were evaluated on.")
    p.add_argument("run_a", type=Path, metavar="RUN_A", help="run folder (or its eval.json)")
    p.add_argument("run_b", type=Path, metavar="RUN_B", help="run folder (or its eval.json)")
    _defaulted(p, "--samples", 10000, "bootstrap resamples", type=POSITIVE)
    _defaulted(p, "--confidence", 0.95, "interval level in (0, 1)", type=_finite_float(0.0, 1.0, low_open=True))
    _defaulted(p, "--seed", 0, "bootstrap seed", type=int)
    p.add_argument("--per-combination", action="store_true", help="also one row per combination")
    p.add_argument("--json", action="store_true", help="print the differences as JSON")
    return p


def _defaulted(p: argparse.ArgumentParser, flag: str, default: object, text: str, **kwargs: object) -> None:
    """A flag with ``default`` (a tuple: comma-separated), named at the end of its help: the value is written once."""
    value = ",".join(map(str, default)) if isinstance(default, tuple) else default
    p.add_argument(flag, default=value, help=f"{text} (default {value})", **kwargs)  # type: ignore[arg-type]


def adapt_parser() -> argparse.ArgumentParser:
    from ..adapt import OPTIMIZERS
    from ..config import EvalConfig
    from ..evaluation.adaptation import RULES
    from ..evaluation.adaptation_curve import DEFAULT_DRAWS, DEFAULT_RULE, DEFAULT_STEPS, DEFAULT_SUPPORT

    d = EvalConfig()
    p = OneLineParser(
        prog="prism-eval adapt", description="Adaptation curve to a held-out site: Dice (mean over the modality "
        "combinations) after K adaptation steps on N support cases, mean and sd over R support draws. Writes "
        "adapt.json, adapt.md and adapt.png into the run folder (eval.json is left as it is).")
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a folder written by prism-train")
    p.add_argument("--site", required=True, help="the site to adapt to (cases' site attribute)")
    _defaulted(p, "--steps", DEFAULT_STEPS, "adaptation steps K, comma-separated")
    _defaulted(p, "--support", DEFAULT_SUPPORT, "support cases per draw", type=POSITIVE, metavar="N")
    _defaulted(p, "--draws", DEFAULT_DRAWS, "support draws", type=POSITIVE, metavar="R")
    _defaulted(p, "--rule", DEFAULT_RULE, "the run's own adaptation rule (strategy.adapt) or plain fine-tuning",
               choices=RULES)
    p.add_argument("--lr", type=LR, help="step size, finite and > 0 (default: the strategy's own; for fine_tune "
                   f"{_from_run('adapt_lr', d.adapt_lr)})")
    p.add_argument("--optimizer", choices=tuple(OPTIMIZERS),
                   help=f"fine_tune only ({_from_run('adapt_optimizer', d.adapt_optimizer)})")
    p.add_argument("--patch", type=POSITIVE, nargs=3, metavar=("D", "H", "W"),
                   help="patch size (default: whole volumes)")
    p.add_argument("--split", help="where the site's cases come from (default: 'heldout' if present, else eval.split)")
    p.add_argument("--max-query", type=POSITIVE, metavar="Q",
                   help="evaluate on at most Q of the other cases per draw")
    _defaulted(p, "--seed", 0, "seed of the draws and adaptation", type=int)
    p.add_argument("--data", type=Path, help="use this cache instead of the run's")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="= train.device")
    p.add_argument("--allow-seen-site", action="store_true", help="allow a site that is in the training split")
    return p


def fewshot_parser() -> argparse.ArgumentParser:
    from ..evaluation.fewshot import DEFAULT_DRAWS, DEFAULT_SHOTS, DEFAULT_STEPS

    p = OneLineParser(
        prog="prism-eval fewshot", description="Few-shot Dice on held-out classes: for each class and number of "
        "shots N, adapt to N support cases that contain the class with the run's own rule (strategy.adapt) on the "
        "class-against-the-rest task, then score the class on other cases; mean and sd over support draws. "
        "Writes fewshot.json and fewshot.md (into the run folder unless -o).")
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a folder written by prism-train")
    p.add_argument("--classes", help="label values, comma-separated (default: the run's held_out_classes)")
    _defaulted(p, "--shots", DEFAULT_SHOTS, "support set sizes N, comma-separated")
    _defaulted(p, "--steps", DEFAULT_STEPS, "adaptation steps", type=COUNT, metavar="K")
    _defaulted(p, "--draws", DEFAULT_DRAWS, "support draws", type=POSITIVE, metavar="R")
    p.add_argument("--baseline", type=Path, metavar="RUN", help="also score this run (e.g. a standard one, "
                   "adapted by fine-tuning) on the same draws")
    p.add_argument("--lr", type=LR, help="step size for every run, finite and > 0 (default: each strategy's own)")
    p.add_argument("--split", help="where support and query cases come from (default: the run's eval.split)")
    p.add_argument("--max-query", type=POSITIVE, metavar="Q", help="score at most Q query cases per draw")
    _defaulted(p, "--seed", 0, "seed of the draws", type=int)
    p.add_argument("--data", type=Path, help="use this cache instead of the run's")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="= train.device")
    p.add_argument("-o", "--output", type=Path, metavar="DIR", help="where fewshot.* go (default: RUN_DIR)")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "fewshot":
        fargs = fewshot_parser().parse_args(argv[1:])
        return run_command("prism-eval", lambda: _fewshot(fargs))
    if argv and argv[0] == "adapt":
        aargs = adapt_parser().parse_args(argv[1:])
        return run_command("prism-eval", lambda: _adapt(aargs))
    if argv and argv[0] == "compare":
        cargs = compare_parser().parse_args(argv[1:])
        return run_command("prism-eval", lambda: _compare(cargs))
    args = parser().parse_args(argv)
    return run_command("prism-eval", lambda: _evaluate(args))


def _evaluate(args: argparse.Namespace) -> int:
    from ..data.cache_reader import CacheReader
    from ..evaluation.adaptation import AdaptationSettings, evaluation_rule
    from ..evaluation.options import EvalOptions, eval_config_with
    from ..evaluation.provenance import CHECKPOINT_FILE, load_with_record, same_checkpoint
    from ..evaluation.report import evaluate, write_report
    from ..evaluation.results import combination_mean
    from .predict import load_runs

    run_dirs, out_dir = _evaluated_runs(args)
    checkpoint = None if args.ensemble else run_dirs[0] / CHECKPOINT_FILE
    if checkpoint is None:  # an ensemble's report names its runs instead of one checkpoint
        run, record = load_runs(run_dirs, cache=args.data, device=args.device), None
    else:
        run, record = load_with_record(checkpoint, lambda: load_runs(run_dirs, cache=args.data, device=args.device))
    config = run.config
    section = eval_config_with(config.eval, eval_changes(args))  # the run's eval section, flags over it
    options = EvalOptions.from_config(section, channels_last=config.train.channels_last)
    adaptation = None if args.ensemble else AdaptationSettings.from_config(section)  # fast adaptation adapts one run
    reader = CacheReader(run.cache)
    try:
        cases = list(reader.split(section.split))
        if section.max_cases:
            cases = cases[: section.max_cases]
        with case_progress(Console(stderr=True), len(cases)) as on_case:  # progress on stderr, table on stdout
            report = evaluate(run.model, reader, cases, device=run.device, amp_dtype=run.amp_dtype, options=options,
                              adaptation=adaptation, adapt_rule=evaluation_rule(run.strategy), on_case=on_case)
    finally:
        reader.close()
    if checkpoint is None:
        report.settings["ensemble"] = [str(d) for d in run_dirs]
    else:
        same_checkpoint(record, checkpoint)  # not replaced while evaluating: the report scored that checkpoint
        report.checkpoint = record
    paths = write_report(report, out_dir, heatmap=not args.no_heatmap)
    console = stdout_console()
    console.print(report_table(report, f"'{section.split}' split, {len(report.case_ids)} cases"))
    if report.adaptation is not None:
        a = report.adaptation
        before = combination_mean(a.before.dice) * 100
        after = combination_mean(a.after.dice) * 100
        change = ", ".join(f"{r} {x:.2f} -> {y:.2f}" for r, x, y in zip(report.regions, before, after, strict=True))
        console.print(f"fast adaptation to '{a.site}' ({a.steps} steps on {len(a.support_cases)} cases, "
                      f"{len(a.query_cases)} evaluated): mean Dice {change}")
    console.print("report: " + ", ".join(str(p) for p in paths))
    return 0


def _evaluated_runs(args: argparse.Namespace) -> tuple[list[Path], Path]:
    """(the run folders to evaluate, the report folder) from RUN_DIR or --ensemble and -o; one-line errors."""
    from ..errors import ConfigError

    if args.ensemble is None:
        if args.run_dir is None:
            raise ConfigError("RUN_DIR: give a run folder (or --ensemble RUN RUN ... -o DIR)")
        return [args.run_dir], args.output or args.run_dir
    if args.run_dir is not None:
        raise ConfigError(f"--ensemble: give the runs after --ensemble only, not also RUN_DIR {args.run_dir}")
    if len(args.ensemble) < 2:
        raise ConfigError("--ensemble: at least two runs")
    if args.output is None:
        raise ConfigError("--ensemble: needs -o DIR for the report (no run folder is written into)")
    if args.adapt_site is not None:
        raise ConfigError("--adapt-site: fast adaptation adapts one run, not an ensemble")
    return list(args.ensemble), args.output


def _adapt(args: argparse.Namespace) -> int:
    from ..errors import ConfigError
    from ..evaluation.adaptation_curve import run_adaptation_curve

    steps = _int_list(args.steps, "--steps")
    if min(steps) < 0:
        raise ConfigError(f"--steps: counts >= 0 needed, got {args.steps!r}")
    console = stdout_console()
    curve = run_adaptation_curve(
        args.run_dir, site=args.site, steps=steps, support=args.support, draws=args.draws, lr=args.lr,
        optimizer=args.optimizer, patch_size=tuple(args.patch) if args.patch else None, split=args.split,
        max_query=args.max_query, seed=args.seed, allow_seen_site=args.allow_seen_site, cache=args.data,
        device=args.device, rule=args.rule)
    from ..evaluation.adaptation_curve import curve_markdown

    print(curve_markdown(curve))
    console.print(f"report: {args.run_dir / 'adapt.json'}, {args.run_dir / 'adapt.md'}, {args.run_dir / 'adapt.png'}")
    return 0


def _int_list(text: str, flag: str) -> list[int]:
    from ..errors import ConfigError

    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"{flag}: comma-separated integers, got {text!r}") from None
    if not values:
        raise ConfigError(f"{flag}: at least one value needed")
    return values


def _fewshot(args: argparse.Namespace) -> int:
    from ..data.cache_reader import CacheReader
    from ..errors import ConfigError
    from ..evaluation.fewshot import fewshot_dice, fewshot_markdown, write_fewshot
    from ..evaluation.provenance import CHECKPOINT_FILE, load_with_record
    from ..runs import load_run

    shots = _int_list(args.shots, "--shots")

    def load(folder: Path) -> tuple[TrainedRun, dict[str, object]]:
        return load_with_record(folder / CHECKPOINT_FILE, lambda: load_run(folder, cache=args.data,
                                                                           device=args.device))

    run, record = load(args.run_dir)
    held_out = [int(c) for c in getattr(run.strategy, "held_out_classes", ())]
    if args.classes is None and not held_out:
        raise ConfigError("--classes: the run holds out no class (strategy.options.held_out_classes); name them")
    classes = _int_list(args.classes, "--classes") if args.classes is not None else held_out
    runs = [(args.run_dir, run, record)]
    if args.baseline is not None:
        runs.append((args.baseline, *load(args.baseline)))
    reader = CacheReader(run.cache)
    try:
        cases = list(reader.split(args.split or run.config.eval.split))
        results = [fewshot_dice(r.model, r.strategy, reader, cases, classes=classes, shots=shots, steps=args.steps,
                                draws=args.draws, seed=args.seed, exclude=held_out, max_query=args.max_query,
                                lr=args.lr, device=r.device, amp_dtype=r.amp_dtype, run=Path(folder).name,
                                strategy_name=r.config.strategy.name)
                   for folder, r, _ in runs]
        for result, (_, _, rec) in zip(results, runs, strict=True):
            result.checkpoint = rec
    finally:
        reader.close()
    paths = write_fewshot(results, args.output or args.run_dir)
    print(fewshot_markdown(results))
    stdout_console().print("report: " + ", ".join(str(p) for p in paths))
    return 0


def _fmt(v: float) -> str:
    return "n/a" if math.isnan(v) else f"{v:+.2f}"


def _compare(args: argparse.Namespace) -> int:
    from rich.table import Table

    from ..evaluation.compare import compare_reports, hd95_convention, load_report
    from ..evaluation.results import AVERAGING
    from ..evaluation.writers import hd95_definition

    a, b = load_report(args.run_a), load_report(args.run_b)
    diffs = compare_reports(a, b, samples=args.samples, confidence=args.confidence, seed=args.seed,
                            per_combination=args.per_combination)
    conventions = {"hd95": [hd95_convention(a), hd95_convention(b)], "averaging": AVERAGING,
                   "checkpoints": [a.checkpoint, b.checkpoint]}
    if args.json:
        print(json.dumps({"a": str(args.run_a), "b": str(args.run_b), "confidence": args.confidence,
                          "samples": args.samples, "seed": args.seed, "conventions": conventions,
                          "differences": [{k: (None if isinstance(v, float) and math.isnan(v) else v)
                                           for k, v in asdict(d).items()} for d in diffs]}, indent=2))
        return 0
    level = f"{args.confidence * 100:g}%"
    table = Table(title=f"B - A: B = {args.run_b}, A = {args.run_a} ({diffs[0].cases} cases, paired bootstrap "
                  f"{level} CI, {args.samples} resamples, seed {args.seed})")
    for col, justify in (("Metric", "left"), ("Region", "left"), ("Combination", "left"), ("A", "right"),
                         ("B", "right"), ("B - A", "right"), (f"{level} CI", "right")):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for d in diffs:
        unit = "Dice (%)" if d.metric == "dice" else "HD95 (mm)"
        table.add_row(unit, d.region, d.combination or "mean of all", f"{d.mean_a:.2f}", f"{d.mean_b:.2f}",
                      _fmt(d.diff), f"[{_fmt(d.ci_low)}, {_fmt(d.ci_high)}]")
    console = stdout_console()
    console.print(table)
    hd_a, hd_b = conventions["hd95"]
    console.print(f"A and B: the {AVERAGING}; HD95 "
                  + (hd95_definition(hd_a) if hd_a == hd_b and hd_a is not None else
                     f"not compared (A {hd_a or 'none'}, B {hd_b or 'none'})") + ".")
    differing = sorted(k for k in set(a.settings) | set(b.settings) if a.settings.get(k) != b.settings.get(k))
    if differing:
        console.print("note: the runs were evaluated with different settings: " + ", ".join(
            f"{k} (A {a.settings.get(k)}, B {b.settings.get(k)})" for k in differing))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
