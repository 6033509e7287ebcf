"""Time per training step of every meta-strategy relative to `standard`, the strategies taking turns step by step.

    python benchmarks/bench_strategies.py                 # CPU-sized defaults
    python benchmarks/bench_strategies.py --device cuda --patch 80 --width 8 --rounds 20

Every strategy's trainer is built on the same cache and warmed up; then each round times one step of every
strategy, in an order that rotates from round to round, so a change of machine load lands on all of them alike
(a shared machine's load drifts over seconds; timing each strategy in its own block put whole drifts on one).
Each round gives every strategy's ratio to the standard step of the same round; the script prints the median and
the minimum of those ratios over the rounds (the minimum: the least disturbed round), with the median seconds per
step and, on CUDA, peak memory.

Target: Meta-Drop at most 2.1x a standard step by median (it runs two forward/backward passes; see
``plugins/strategies/meta_drop.py``). The adaptation-centred strategies are listed too: meta_transfer runs MAML's
episodes on scale/shift and head only (the frozen weights need no gradient), fast_weights two forward passes per
task plus the generator.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import build_trainer, close_trainer, sync, synthetic_cache  # noqa: E402

STRATEGIES = {
    "standard": "{}",
    "meta_drop": "{}",
    "maml (1st order, K=1, 2 tasks)": "{inner_steps: 1, first_order: true, tasks_per_step: 2}",
    "maml (2nd order, K=1, 2 tasks)": "{inner_steps: 1, first_order: false, tasks_per_step: 2}",
    "maml (ANIL: head only, 1st order)": "{inner_steps: 1, first_order: true, tasks_per_step: 2, adapt_params: head}",
    "maml (Meta-SGD, 1st order)": "{inner_steps: 1, first_order: true, tasks_per_step: 2, learn_inner_lr: true}",
    "reptile (k=3)": "{inner_steps: 3}",
    "meta_transfer (K=1, 2 tasks)": "{inner_steps: 1, first_order: true, tasks_per_step: 2}",
    "fast_weights (2 tasks)": "{tasks_per_step: 2}",
}


def _timed_step(trainer: Any) -> tuple[float, float]:
    """Seconds of one ``strategy.step`` (the device synchronised on both ends) and its peak memory (GiB, CUDA)."""
    ctx = trainer.ctx
    sync(ctx.device)
    if ctx.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(ctx.device)
    t0 = time.perf_counter()
    trainer.strategy.step(ctx)
    sync(ctx.device)
    seconds = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated(ctx.device) / 2**30 if ctx.device.type == "cuda" else float("nan")
    return seconds, peak


def interleaved(trainers: dict[str, Any], *, rounds: int, warmup: int, base: str = "standard"
                ) -> dict[str, dict[str, float]]:
    """Time ``rounds`` rounds of one step per trainer, the order rotating each round.

    Returns:
        ``{name: {"median_s", "median_ratio", "min_ratio", "max_ratio", "peak_gib"}}``; ratios are to ``base``'s
        step of the same round.
    """
    names = list(trainers)
    for trainer in trainers.values():
        trainer.ctx.model.train()
        for _ in range(warmup):
            trainer.strategy.step(trainer.ctx)
    times: dict[str, list[float]] = {n: [] for n in names}
    peaks: dict[str, float] = dict.fromkeys(names, float("nan"))
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            seconds, peak = _timed_step(trainers[name])
            times[name].append(seconds)
            peaks[name] = peak if peaks[name] != peaks[name] else max(peaks[name], peak)
    out = {}
    for name in names:
        ratios = [t / b for t, b in zip(times[name], times[base], strict=True)]
        out[name] = {"median_s": statistics.median(times[name]), "median_ratio": statistics.median(ratios),
                     "min_ratio": min(ratios), "max_ratio": max(ratios), "peak_gib": peaks[name]}
    return out


def build_all(cache: Path, out: Path, args: argparse.Namespace) -> dict[str, Any]:
    """One trainer per strategy, as prism-train builds it, on ``cache``."""
    trainers = {}
    for i, (name, options) in enumerate(STRATEGIES.items()):
        if args.only and not any(k in name for k in ("standard", args.only)):
            continue
        trainers[name] = build_trainer(
            [f"strategy.name={name.split(' ')[0]}", f"strategy.options={options}",
             f"model.options.width={args.width}", f"losses={args.losses}"],
            cache, out / f"run{i}", size=args.patch, batch=args.batch, device=args.device,
            steps=args.warmup + args.rounds)
    return trainers


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--patch", type=int, default=32)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--width", type=int, default=8)
    p.add_argument("--rounds", type=int, default=9, help="steps timed per strategy, one per round")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--losses", default="[{name: fuse}]", help="loss terms, as a YAML list")
    p.add_argument("--only", default=None, help="standard and the strategies whose name contains this text")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        cache = synthetic_cache(Path(tmp) / "bench.h5", max(48, args.patch))
        trainers = build_all(cache, Path(tmp), args)
        try:
            results = interleaved(trainers, rounds=args.rounds, warmup=args.warmup)
        finally:
            for trainer in trainers.values():
                close_trainer(trainer)
    print(f"device {args.device}, patch {args.patch}^3, batch {args.batch}, width {args.width}, losses "
          f"{args.losses}; {args.rounds} rounds of one step per strategy, order rotating; torch {torch.__version__}")
    print(f"{'strategy':34s} {'s/step':>8s} {'x std (median)':>15s} {'min':>6s} {'max':>6s} {'peak GiB':>9s}")
    for name, r in results.items():
        print(f"{name:34s} {r['median_s']:8.3f} {r['median_ratio']:15.2f} {r['min_ratio']:6.2f} "
              f"{r['max_ratio']:6.2f} {r['peak_gib']:9.2f}")
    print(json.dumps({"bench": "strategies", "device": args.device, "patch": args.patch, "rounds": args.rounds,
                      "results": {k: {m: (None if v != v else round(v, 4)) for m, v in r.items()}
                                  for k, r in results.items()}}))
    return results


if __name__ == "__main__":
    main()
