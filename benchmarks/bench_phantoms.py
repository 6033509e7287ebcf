"""Do the synthetic phantoms separate methods? Prints figures for the demo data (default settings).

1. generation time of the demo dataset (20 cases of 48^3 by default);
2. a one-convolution network (the README's TinyNet) trained briefly: WT/TC/ET Dice on FLAIR+T1ce+T2 and the
   15-combination mean (a threshold-readable phantom lets it score high; a good phantom keeps it low);
3. the demo (``prism-train --strategy standard``: multi_unet, 200 steps) with all four modalities and the
   15-combination mean, its wall time including generation, and the physics gaps: ET Dice with vs without T1ce,
   WT Dice with vs without FLAIR or T2 (both should be clearly positive).

Usage: ``python benchmarks/bench_phantoms.py [--tiny-steps 50] [--demo-steps 200] [--threads 2] [--skip-demo]``.
Timings on a shared machine are noisy; the Dice figures are the point.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from prism.backbone import Backbone
from prism.config import SynthConfig, build_config
from prism.data_tools.synthetic import SynthSettings, write_synthetic_cache
from prism.engine.trainer import Trainer
from prism.outputs import SegOutput
from prism.presets import load_preset
from prism.registry import register


class TinyNet(Backbone):
    """One convolution (the README's third-party example)."""

    provides = frozenset({"logits"})
    size_divisor = 1

    def __init__(self, modalities, num_classes, channels=8):
        super().__init__(modalities, num_classes)
        self.conv = nn.Conv3d(len(modalities), channels, 3, padding=1)
        self.head = nn.Conv3d(channels, num_classes, 1)

    def forward(self, image, mask):
        x = image * mask[:, :, None, None, None].to(image.dtype)
        return SegOutput(logits=self.head(torch.relu(self.conv(x))))


def train_and_evaluate(cache: Path, out: Path, overrides: list[str], preset: str = "demo"):
    config = build_config(load_preset(preset), [f"data.cache={cache}", "train.loggers=[csv]", *overrides])
    trainer = Trainer(config, out, cache_path=cache)
    trainer.fit()
    report = trainer.evaluate()
    trainer.close()
    return report


def summarise(report, label: str) -> None:
    dice = report.mean_dice() * 100  # [15, 3]
    names = report.combinations
    members = [set(n.split("+")) for n in names]
    three = names.index("FLAIR+T1ce+T2")
    four = max(range(len(names)), key=lambda i: len(members[i]))
    mean = np.nanmean(dice, axis=0)
    print(f"{label}: FLAIR+T1ce+T2 WT/TC/ET {dice[three, 0]:.1f}/{dice[three, 1]:.1f}/{dice[three, 2]:.1f}; "
          f"all four {dice[four, 0]:.1f}/{dice[four, 1]:.1f}/{dice[four, 2]:.1f}; "
          f"15-combination mean {mean[0]:.1f}/{mean[1]:.1f}/{mean[2]:.1f}")
    with_t1ce = [i for i, m in enumerate(members) if "T1ce" in m]
    without_t1ce = [i for i, m in enumerate(members) if "T1ce" not in m]
    with_ft = [i for i, m in enumerate(members) if m & {"FLAIR", "T2"}]
    without_ft = [i for i, m in enumerate(members) if not m & {"FLAIR", "T2"}]
    print(f"  physics gaps: ET with T1ce {np.mean(dice[with_t1ce, 2]):.1f} vs without "
          f"{np.mean(dice[without_t1ce, 2]):.1f}"
          f" (gap {np.mean(dice[with_t1ce, 2]) - np.mean(dice[without_t1ce, 2]):+.1f}); "
          f"WT with FLAIR or T2 {np.mean(dice[with_ft, 0]):.1f} vs without {np.mean(dice[without_ft, 0]):.1f} "
          f"(gap {np.mean(dice[with_ft, 0]) - np.mean(dice[without_ft, 0]):+.1f})")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny-steps", type=int, default=50)
    p.add_argument("--demo-steps", type=int, default=200)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--skip-demo", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    demo = SynthConfig()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        cache = root / "demo.h5"
        t0 = time.perf_counter()
        write_synthetic_cache(str(cache), SynthSettings(cases=demo.cases, shape=tuple(demo.shape), seed=demo.seed),
                              test_fraction=demo.test_fraction)
        generation = time.perf_counter() - t0
        print(f"generation: {demo.cases} cases of {'x'.join(map(str, demo.shape))} in {generation:.1f} s")
        register("backbone", "tiny", TinyNet)
        t0 = time.perf_counter()
        report = train_and_evaluate(cache, root / "tiny", ["model.name=tiny", "model.options={}", "eval.hd95=false",
                                                           f"train.steps={args.tiny_steps}",
                                                           f"train.threads={args.threads}"])
        summarise(report, f"TinyNet (one convolution, {args.tiny_steps} steps, {time.perf_counter() - t0:.0f} s)")
        if not args.skip_demo:
            t0 = time.perf_counter()
            report = train_and_evaluate(cache, root / "demo", [f"train.steps={args.demo_steps}",
                                                               f"train.threads={args.threads}"])
            took = time.perf_counter() - t0
            summarise(report, f"demo multi_unet ({args.demo_steps} steps, {took:.0f} s train+eval, "
                      f"{took + generation:.0f} s with generation)")


if __name__ == "__main__":
    main()
