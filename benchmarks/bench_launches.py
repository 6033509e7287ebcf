"""Kernel launches and host syncs per training step, counted on a CPU (see ``launch_counter.py`` for what counts).

One full step (forward, losses, backward, gradient clipping, optimizer) of each configuration, built by
``prism.engine.trainer.Trainer`` from a config exactly as ``prism-train`` builds it, on a tiny synthetic cache
(batch 1, 16^3: op counts do not depend on the patch size). The first step is run uncounted (optimizer state and
lazy initialisation), the second is counted; drawing batches (the DataLoader's work) is not counted. The rfnet
step is also split into model forward, losses, loss backward, model backward and optimizer.

    python benchmarks/bench_launches.py            # table + one JSON line
    python benchmarks/bench_launches.py --only rfnet

Reference: PASSION's step (Jun-Jie-Shi/PASSION, code/train.py: its RFNet width 8, full losses, AdamW) counted by the
same rule. Target: the rfnet step at most 1,000 ops and 0 syncs.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import build_trainer, close_trainer, synthetic_cache  # noqa: E402
from launch_counter import LaunchCounter  # noqa: E402

PASSION_OPS = 12_193
PASSION_SYNCS = 214
RFNET_LOSSES = "[{name: prism, options: {beta: 0.5, delta: 0.1}}, {name: rfnet_sep}]"
RFNET = ["model.name=rfnet", "model.options={width: 8}", f"losses={RFNET_LOSSES}"]
CONFIGS: dict[str, list[str]] = {
    "rfnet w8 + prism + rfnet_sep": RFNET,
    "multi_unet + prism": ["model.name=multi_unet", "model.options={width: 8}",
                           "losses=[{name: prism, options: {beta: 0.5, delta: 0.1}}]"],
    "rfnet, meta_drop": [*RFNET, "strategy.name=meta_drop"],
    "rfnet, maml first order (K=1, 2 tasks)": [
        *RFNET, "strategy.name=maml", "strategy.options={first_order: true, inner_steps: 1, tasks_per_step: 2}"],
}


def _uncounted_batches(ctx: Any, counter: LaunchCounter) -> None:
    """Make the context's batch fetching invisible to ``counter`` (instance attributes shadow the methods)."""
    for name in ("next_batch", "raw_batch"):
        method = getattr(type(ctx), name).__get__(ctx)

        @functools.wraps(method)
        def paused(*args: Any, _method: Callable = method, **kwargs: Any) -> Any:
            with counter.pause():
                return _method(*args, **kwargs)

        setattr(ctx, name, paused)


def count_step(trainer: Any) -> LaunchCounter:
    """Ops and syncs of the second ``strategy.step`` (the first initialises optimizer state)."""
    ctx = trainer.ctx
    ctx.model.train()
    trainer.strategy.step(ctx)
    counter = LaunchCounter()
    _uncounted_batches(ctx, counter)
    with counter:
        trainer.strategy.step(ctx)
    for name in ("next_batch", "raw_batch"):
        delattr(ctx, name)
    return counter


def _leaves(output: Any) -> tuple[Any, list[torch.Tensor], list[torch.Tensor]]:
    """A copy of a dataclass output whose tensors are detached leaves; (copy, originals, leaves)."""
    originals: list[torch.Tensor] = []
    leaves: list[torch.Tensor] = []

    def cut(value: Any) -> Any:
        if isinstance(value, torch.Tensor) and value.requires_grad:
            leaf = value.detach().requires_grad_(True)
            originals.append(value)
            leaves.append(leaf)
            return leaf
        if isinstance(value, list):
            return [cut(v) for v in value]
        return value

    copy = dataclasses.replace(output, **{f.name: cut(getattr(output, f.name)) for f in dataclasses.fields(output)})
    return copy, originals, leaves


def count_phases(trainer: Any) -> dict[str, LaunchCounter]:
    """The standard step split: model forward, loss forward, loss backward, model backward, optimizer."""
    ctx = trainer.ctx
    ctx.model.train()
    trainer.strategy.step(ctx)  # warm-up (optimizer state)
    batch = ctx.next_batch("train")
    phases: dict[str, LaunchCounter] = {}
    ctx.optimizer.zero_grad(set_to_none=True)
    with LaunchCounter() as phases["model forward"]:
        output = ctx.model(ctx.prepare_image(batch.image), batch.mask)
    cut, originals, leaves = _leaves(output)
    with LaunchCounter() as phases["losses forward"]:
        loss, _ = ctx.losses(cut, batch)
    with LaunchCounter() as phases["losses backward"]:
        loss.backward()
    pairs = [(o, leaf.grad) for o, leaf in zip(originals, leaves, strict=True) if leaf.grad is not None]
    with LaunchCounter() as phases["model backward"]:
        torch.autograd.backward([o for o, _ in pairs], [g for _, g in pairs])
    with LaunchCounter() as phases["optimizer (clip + step)"]:
        ctx.optimizer_step()
    return phases


def measure(configs: dict[str, list[str]] | None = None, *, size: int = 16, phases: bool = True
            ) -> dict[str, dict[str, Any]]:
    """Counts per configuration (and the rfnet phases): ``{name: {"ops", "syncs", "top", "sync_ops"}}``."""
    configs = CONFIGS if configs is None else configs
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="prism-launches-") as tmp:
        cache = synthetic_cache(Path(tmp) / "tiny.h5", size)
        for i, (name, overrides) in enumerate(configs.items()):
            torch.manual_seed(0)
            trainer = build_trainer(overrides, cache, Path(tmp) / f"run{i}", size=size)
            try:
                c = count_step(trainer)
                results[name] = {"ops": c.total, "syncs": c.sync_total, "top": dict(c.ops.most_common(8)),
                                 "sync_ops": dict(c.syncs)}
                if phases and i == 0:
                    for phase, pc in count_phases(trainer).items():
                        results[f"  {phase}"] = {"ops": pc.total, "syncs": pc.sync_total,
                                                 "top": dict(pc.ops.most_common(5)), "sync_ops": dict(pc.syncs)}
            finally:
                close_trainer(trainer)
    return results


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=16, help="patch edge (counts do not depend on it)")
    ap.add_argument("--only", default=None, help="run the configurations whose name contains this text")
    ap.add_argument("--top", action="store_true", help="also print the most frequent ops")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    configs = {k: v for k, v in CONFIGS.items() if args.only is None or args.only in k}
    results = measure(configs, size=args.size, phases=args.only is None or "rfnet w8" in next(iter(configs), ""))
    print(f"one training step, batch 1, {args.size}^3, torch {torch.__version__}; PASSION: {PASSION_OPS:,} ops, "
          f"{PASSION_SYNCS} syncs")
    print(f"{'configuration':44s} {'ops':>7s} {'x fewer':>8s} {'syncs':>6s}")
    for name, r in results.items():
        ratio = f"{PASSION_OPS / r['ops']:.1f}x" if not name.startswith(" ") and r["ops"] else ""
        print(f"{name:44s} {r['ops']:7,d} {ratio:>8s} {r['syncs']:6d}"
              + (f"  {r['sync_ops']}" if r["syncs"] else ""))
        if args.top:
            print("      " + ", ".join(f"{k} {v}" for k, v in r["top"].items()))
    print(json.dumps({"bench": "launches", "size": args.size, "passion_ops": PASSION_OPS,
                      "passion_syncs": PASSION_SYNCS,
                      "results": {k.strip(): {"ops": v["ops"], "syncs": v["syncs"]} for k, v in results.items()}}))


if __name__ == "__main__":
    main()
