"""Adaptation results of the meta-strategies on synthetic data: a held-out site and a held-out class.

    python benchmarks/bench_adaptation.py                    # CPU-sized: a few minutes on 2 cores
    python benchmarks/bench_adaptation.py --steps 400 --shape 48 --cases 60 --device cuda

1. Held-out site. Phantoms from 4 sites; ``site3`` is kept out of training (split ``heldout``). Five runs train
   on sites 0-2 for the same number of steps: standard (its adaptation is fine-tuning), MAML (site tasks), Meta-SGD
   (site tasks, learned inner rates), meta-transfer (initialised from the standard run, scale/shift + head) and the
   fast-weight generator (site tasks). Each adapts to site3 with its own rule (``prism-eval adapt``): Dice (mean of
   WT/TC/ET over the 15 combinations) after K steps on one support case, mean over support draws.
2. Held-out class. Phantoms with the extra structure classes (CSF 4, white-matter hyperintensities 5); MAML on
   class tasks with class 5 held out, against fine-tuning a standard run: few-shot Dice of class 5 after K steps
   on N support cases (``prism.evaluation.fewshot``). The standard run saw class 5 in training, the class-task run
   never did: the standard run is a reference for "already knows the class", not a like-for-like competitor.

Prints two tables; the run folders are left in ``--out`` (a temporary folder by default).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    from prism.config import build_config
    from prism.data.cache_reader import CacheReader
    from prism.data_tools.synthetic import SynthSettings, write_synthetic_cache
    from prism.engine.trainer import Trainer
    from prism.evaluation.adaptation_curve import run_adaptation_curve
    from prism.evaluation.fewshot import fewshot_dice, fewshot_markdown
    from prism.runs import load_run

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", type=int, default=40)
    p.add_argument("--shape", type=int, default=32)
    p.add_argument("--steps", type=int, default=60, help="training steps of every run")
    p.add_argument("--k", default="0,1,5,10", help="adaptation steps K")
    p.add_argument("--draws", type=int, default=2)
    p.add_argument("--held-out-class", type=int, default=5, help="4 (CSF) or 5 (white-matter hyperintensities)")
    p.add_argument("--class-steps", type=int, default=None, help="training steps of the class runs (default --steps)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    ks = [int(k) for k in args.k.split(",")]
    out = args.out or Path(tempfile.mkdtemp(prefix="prism-adapt-"))
    out.mkdir(parents=True, exist_ok=True)
    cache = out / "sites.h5"
    if not cache.exists():
        write_synthetic_cache(str(cache), SynthSettings(cases=args.cases, shape=(args.shape,) * 3, seed=11, sites=4),
                              test_fraction=0.2, hold_out_sites=["site3"])
    common = [f"data.cache={cache}", f"data.patch_size=[{args.shape},{args.shape},{args.shape}]",
              "data.batch_size=2", f"train.steps={args.steps}", "train.log_every=1000",
              f"train.checkpoint_every={args.steps}", f"train.device={args.device}", "model.options.width=8",
              "optim.lr=0.003"]
    arms = {
        "standard (fine-tuning)": ["strategy.name=standard"],
        "maml (site tasks)": ["strategy.name=maml",
                              "strategy.options={tasks: site, inner_steps: 1, inner_lr: 0.05, tasks_per_step: 2}"],
        "meta-sgd (site tasks)": ["strategy.name=maml", "strategy.options={tasks: site, inner_steps: 1, "
                                  "inner_lr: 0.05, tasks_per_step: 2, learn_inner_lr: true}"],
        "meta_transfer": ["strategy.name=meta_transfer", f"model.init_from={out / 'standard (fine-tuning)'}",
                          "strategy.options={tasks: site, inner_steps: 1, inner_lr: 0.05, tasks_per_step: 2}"],
        "fast_weights": ["strategy.name=fast_weights",
                         "strategy.options={tasks: site, tasks_per_step: 2, refine_steps: 0}"],
    }
    extra = out / "classes.h5"
    if not extra.exists():
        write_synthetic_cache(str(extra), SynthSettings(cases=args.cases, shape=(args.shape,) * 3, seed=12,
                                                        extra_classes=True), test_fraction=0.3)
    held, class_steps = args.held_out_class, args.class_steps or args.steps
    class_arms = {
        f"maml (class tasks, class {held} held out)": [
            "strategy.name=maml", f"train.steps={class_steps}", f"train.checkpoint_every={class_steps}",
            f"strategy.options={{tasks: class, held_out_classes: [{held}], inner_steps: 1, inner_lr: 0.05}}"],
        f"standard (saw class {held})": ["strategy.name=standard", f"train.steps={class_steps}",
                                         f"train.checkpoint_every={class_steps}"],
    }
    seconds = {}
    jobs = [(name, cache, overrides) for name, overrides in arms.items()]
    jobs += [(name, extra, [*overrides, f"data.cache={extra}"]) for name, overrides in class_arms.items()]
    for name, data, overrides in jobs:
        run = out / name
        if (run / "last.pt").exists():
            continue
        t0 = time.perf_counter()
        trainer = Trainer(build_config(None, [*common, *overrides]), run, cache_path=data)
        try:
            trainer.fit()
        finally:
            trainer.close()
        seconds[name] = time.perf_counter() - t0
        print(f"trained {name} in {seconds[name]:.0f} s", file=sys.stderr, flush=True)

    print(f"\nHeld-out site3: Dice (%) after K steps on 1 support case, mean over {args.draws} draws "
          f"({args.cases} phantoms of {args.shape}^3, {args.steps} training steps, {args.device})")
    print(f"{'strategy':34s} " + " ".join(f"{'K=' + str(k):>8s}" for k in ks))
    for name in arms:
        curve = run_adaptation_curve(out / name, site="site3", steps=ks, support=1, draws=args.draws, max_query=4,
                                     device=args.device)
        mean = curve.mean().mean(1) * 100  # [K]: mean over regions
        print(f"{name:34s} " + " ".join(f"{m:8.1f}" for m in mean), flush=True)

    reader = CacheReader(extra)
    try:
        cases = list(reader.split("test"))
        results = []
        for name in class_arms:
            run = load_run(out / name, device=args.device)
            results.append(fewshot_dice(run.model, run.strategy, reader, cases, classes=[held], shots=[1, 2],
                                        steps=max(ks), draws=args.draws, exclude=[held], max_query=4,
                                        lr=0.05, device=run.device, run=name, strategy_name=run.config.strategy.name))
    finally:
        reader.close()
    print()
    print(fewshot_markdown(results))
    print(f"run folders: {out}")
    if seconds:
        print("training time (s): " + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items()))


if __name__ == "__main__":
    main()
