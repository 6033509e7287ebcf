"""Kernel launches and host syncs per training step, counted on a CPU by the rule in ``launch_counter.py``.

Each configuration is built and trained by ``prism.engine.trainer.Trainer`` exactly as ``prism-train`` trains it
(batch 1, 16^3: op counts do not depend on the patch size), logging every 2 steps. An observer counts whole loop
iterations: the strategy's step, the LR schedule, the loss meter, the log read and every observer. Step 3 is the
"step" row (no log row: the steady state) and step 4 the "logging step" row (the interval's one read); steps 1-2
are warm-up (optimizer state, DataLoaders). Drawing batches (the DataLoader's work) is not counted. The rfnet
step is also counted under bf16 autocast (CPU autocast: a lower bound of CUDA's, see ``launch_counter.py``; 32^3
patches, see ``BF16_MIN_SIZE``) and split into model forward, losses, loss backward, model backward and optimizer.

    python benchmarks/bench_launches.py            # table + one JSON line
    python benchmarks/bench_launches.py --only rfnet

Targets for the rfnet step (rfnet w8 + prism + rfnet_sep): at most 1,000 ops in float32 and 1,100 under bf16
autocast; 0 syncs on a step without a log row, at most 1 on a logging step. ``train.ema`` adds one op (a single
``_foreach_lerp_`` over the weights) and no sync. Reference: PASSION's step
(Jun-Jie-Shi/PASSION, code/train.py: its RFNet width 8, full losses, AdamW), counted by the same rule: 11,782 ops
and 214 device syncs, plus 576 host reads of AdamW's step counters.
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

from prism.engine.observers import Observer  # noqa: E402

PASSION_OPS = 11_782
PASSION_SYNCS = 214
PASSION_HOST_READS = 576
RFNET_LOSSES = "[{name: prism, options: {beta: 0.5, delta: 0.1}}, {name: rfnet_sep}]"
RFNET = ["model.name=rfnet", "model.options={width: 8}", f"losses={RFNET_LOSSES}"]
RFNET_NAME = "rfnet w8 + prism + rfnet_sep"
CONFIGS: dict[str, list[str]] = {
    RFNET_NAME: RFNET,
    "multi_unet + prism": ["model.name=multi_unet", "model.options={width: 8}",
                           "losses=[{name: prism, options: {beta: 0.5, delta: 0.1}}]"],
    "rfnet, meta_drop": [*RFNET, "strategy.name=meta_drop"],
    "rfnet, train.ema": [*RFNET, "train.ema=0.999"],  # the weight average: one multi-tensor update a step
    "rfnet, maml first order (K=1, 2 tasks)": [
        *RFNET, "strategy.name=maml", "strategy.options={first_order: true, inner_steps: 1, tasks_per_step: 2}"],
}
LOOP = ["train.steps=6", "train.log_every=2", "train.checkpoint_every=100000"]
#: the bf16 rows use patches of at least this edge: at 16^3 RFNet's deepest level is 2^3 voxels, where bf16 instance
#: norms overflow the gradient on a CPU and the run (rightly) stops as non-finite; counts do not depend on the size
BF16_MIN_SIZE = 32
STEP, LOGGING_STEP = 3, 4  # iterations counted (log rows at 2, 4, 6)


def _uncounted_batches(ctx: Any, current: Callable[[], LaunchCounter | None]) -> None:
    """Make the context's batch fetching invisible to the counter in use (instance attributes shadow the
    methods)."""
    for name in ("next_batch", "raw_batch"):
        method = getattr(type(ctx), name).__get__(ctx)

        @functools.wraps(method)
        def paused(*args: Any, _method: Callable = method, **kwargs: Any) -> Any:
            counter = current()
            if counter is None:
                return _method(*args, **kwargs)
            with counter.pause():
                return _method(*args, **kwargs)

        setattr(ctx, name, paused)


class IterationCounter(Observer):
    """Counts the loop iterations ``steps`` (everything from the end of the previous iteration's observers to the
    end of this one's: it runs last)."""

    name = "launch-counter"
    order = 10_000

    def __init__(self, steps: tuple[int, ...]) -> None:
        self.steps = steps
        self.counters: dict[int, LaunchCounter] = {}
        self.active: LaunchCounter | None = None

    def _begin(self, step: int) -> None:
        if step in self.steps:
            self.active = LaunchCounter()
            self.counters[step] = self.active
            self.active.__enter__()

    def on_fit_start(self, trainer: Any) -> None:
        _uncounted_batches(trainer.ctx, lambda: self.active)
        self._begin(trainer.ctx.step + 1)

    def on_step_end(self, trainer: Any, parts: Any) -> None:
        if self.active is not None:
            self.active.__exit__(None, None, None)
            self.active = None
        self._begin(trainer.ctx.step + 1)

    def on_fit_end(self, trainer: Any, error: BaseException | None) -> None:
        if self.active is not None:
            self.active.__exit__(None, None, None)
            self.active = None
        for name in ("next_batch", "raw_batch"):
            trainer.ctx.__dict__.pop(name, None)


def count_loop(trainer: Any, steps: tuple[int, ...] = (STEP, LOGGING_STEP)) -> dict[int, LaunchCounter]:
    """Train ``trainer`` (6 steps) and count the loop iterations ``steps``."""
    counter = IterationCounter(steps)
    trainer.add_observer(counter)
    trainer.fit()
    return counter.counters


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


def _row(c: LaunchCounter, top: int = 8) -> dict[str, Any]:
    return {"ops": c.total, "syncs": c.sync_total, "host_reads": c.host_read_total,
            "top": dict(c.ops.most_common(top)), "sync_ops": dict(c.syncs)}


def _measure_one(name: str, overrides: list[str], cache: Path, run_dir: Path, size: int, *, bf16: bool,
                 phases: bool) -> dict[str, dict[str, Any]]:
    torch.manual_seed(0)
    trainer = build_trainer([*overrides, *LOOP], cache, run_dir, size=size)
    if bf16:
        trainer.ctx.amp_dtype = torch.bfloat16  # the CUDA default (train.amp=bf16); CPU autocast for counting
    results: dict[str, dict[str, Any]] = {}
    try:
        counters = count_loop(trainer)
        suffix = ", bf16 autocast" if bf16 else ""
        results[name + suffix] = _row(counters[STEP])
        results[f"{name}{suffix}, logging step"] = _row(counters[LOGGING_STEP])
        if phases:
            results.update({f"  {phase}": _row(c, 5) for phase, c in count_phases(trainer).items()})
    finally:
        close_trainer(trainer)
    return results


def measure(configs: dict[str, list[str]] | None = None, *, size: int = 16, phases: bool = True,
            bf16: bool = True) -> dict[str, dict[str, Any]]:
    """Counts per configuration: ``{row: {"ops", "syncs", "host_reads", "top", "sync_ops"}}``; the rfnet
    configuration also under bf16 autocast and split into phases."""
    configs = CONFIGS if configs is None else configs
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="prism-launches-") as tmp:
        cache = synthetic_cache(Path(tmp) / "tiny.h5", max(size, BF16_MIN_SIZE if bf16 else size))
        for i, (name, overrides) in enumerate(configs.items()):
            results.update(_measure_one(name, overrides, cache, Path(tmp) / f"run{i}", size, bf16=False,
                                        phases=phases and name == RFNET_NAME))
            if bf16 and name == RFNET_NAME:
                results.update(_measure_one(name, overrides, cache, Path(tmp) / f"run{i}-bf16",
                                            max(size, BF16_MIN_SIZE), bf16=True, phases=False))
    return results


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=16, help="patch edge (counts do not depend on it)")
    ap.add_argument("--only", default=None, help="run the configurations whose name contains this text")
    ap.add_argument("--top", action="store_true", help="also print the most frequent ops")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    configs = {k: v for k, v in CONFIGS.items() if args.only is None or args.only in k}
    results = measure(configs, size=args.size)
    print(f"one training step as prism-train runs it, batch 1, {args.size}^3, torch {torch.__version__}; "
          f"PASSION: {PASSION_OPS:,} ops, {PASSION_SYNCS} syncs (+{PASSION_HOST_READS} host reads)")
    print(f"{'configuration':58s} {'ops':>7s} {'x fewer':>8s} {'syncs':>6s} {'host reads':>11s}")
    for name, r in results.items():
        ratio = f"{PASSION_OPS / r['ops']:.1f}x" if not name.startswith(" ") and r["ops"] else ""
        print(f"{name:58s} {r['ops']:7,d} {ratio:>8s} {r['syncs']:6d} {r['host_reads']:11d}"
              + (f"  {r['sync_ops']}" if r["syncs"] else ""))
        if args.top:
            print("      " + ", ".join(f"{k} {v}" for k, v in r["top"].items()))
    print(json.dumps({"bench": "launches", "size": args.size, "passion_ops": PASSION_OPS,
                      "passion_syncs": PASSION_SYNCS, "passion_host_reads": PASSION_HOST_READS,
                      "results": {k.strip(): {"ops": v["ops"], "syncs": v["syncs"], "host_reads": v["host_reads"]}
                                  for k, v in results.items()}}))


if __name__ == "__main__":
    main()
