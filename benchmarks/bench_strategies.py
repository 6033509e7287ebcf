"""Time per training step of every meta-strategy relative to `standard`, in one run on the same data.

    python benchmarks/bench_strategies.py                 # CPU-sized defaults
    python benchmarks/bench_strategies.py --device cuda --patch 80 --width 8 --steps 20

Target: Meta-Drop at most 2.1x a standard step (it does two forward/backward passes). The
adaptation-centred strategies are listed too: meta_transfer runs MAML's episodes on scale/shift and
head only (the frozen weights need no gradient), fast_weights two forward passes per task plus the generator.
Prints steps/s, the ratio to standard and, on CUDA, peak memory.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import build_trainer, close_trainer, synthetic_cache, time_steps  # noqa: E402

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


def measure(name: str, options: str, cache: Path, args: argparse.Namespace, out: Path) -> tuple[float, float]:
    strategy = name.split(" ")[0]
    trainer = build_trainer([f"strategy.name={strategy}", f"strategy.options={options}",
                             f"model.options.width={args.width}", f"losses={args.losses}"],
                            cache, out / strategy, size=args.patch, batch=args.batch, device=args.device,
                            steps=args.warmup + args.steps)
    try:
        timing = time_steps(trainer, warmup=args.warmup, steps=args.steps)
    finally:
        close_trainer(trainer)
    return timing.median_s, timing.peak_gib


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--patch", type=int, default=32)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--width", type=int, default=8)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--losses", default="[{name: fuse}]", help="loss terms, as a YAML list")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cache = synthetic_cache(tmp / "bench.h5", max(48, args.patch))
        rows = [(name, *measure(name, opts, cache, args, tmp)) for name, opts in STRATEGIES.items()]
    base = rows[0][1]
    print(f"device {args.device}, patch {args.patch}^3, batch {args.batch}, width {args.width}, "
          f"median of {args.steps} steps, losses {args.losses}")
    print(f"{'strategy':34s} {'s/step':>8s} {'x standard':>11s} {'peak GiB':>9s}")
    for name, t, peak in rows:
        print(f"{name:34s} {t:8.3f} {t / base:11.2f} {peak:9.2f}")


if __name__ == "__main__":
    main()
