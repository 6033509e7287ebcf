"""Do the synthetic phantoms need context to read? A one-convolution probe against the demo backbone.

For each seed: generate the demo dataset with that seed (20 cases of 48^3 by default), train the probe (one 3x3x3
convolution and a 1x1 head, which sees a voxel's 3x3x3 neighbourhood in every modality and nothing further) and
the demo backbone (``prism-train --strategy standard``: multi_unet) for the same number of steps with the same
training seed, and evaluate both on the test cases in all 15 modality combinations. Printed, as mean and spread
over seeds:

- Dice (%) of WT, TC and ET with all four modalities and on the 15-combination mean, probe against backbone, and
  the backbone's margin over the probe (a phantom that only context can read keeps it positive everywhere);
- the physics gaps of each model: ET with vs without T1ce, WT with vs without FLAIR or T2 (clearly positive on real
  MRI, and they should be here);
- what the rare modalities add for the backbone: each region with all four modalities minus without T2
  (FLAIR+T1ce+T1) and minus without FLAIR (T1ce+T1+T2).

Usage: ``python benchmarks/bench_phantoms.py [--seeds 0 1 2] [--steps 200] [--threads 2] [--cases 20]``. On 2
CPU cores one seed takes about 1.5 minutes. The Dice figures are the point; nothing here is timed.
"""

from __future__ import annotations

import argparse
import tempfile
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

REGIONS = ("WT", "TC", "ET")


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


def train_and_evaluate(cache: Path, out: Path, overrides: list[str]) -> tuple[np.ndarray, list[str]]:
    """Train the demo preset with ``overrides`` and evaluate: mean Dice (%) ``[15, 3]`` and combination names."""
    config = build_config(load_preset("demo"), [f"data.cache={cache}", "train.loggers=[csv]", "eval.hd95=false",
                                                "train.checkpoint_every=100000", *overrides])
    trainer = Trainer(config, out, cache_path=cache)
    try:
        trainer.fit()
        report = trainer.evaluate()
    finally:
        trainer.close()
    return report.mean_dice() * 100, list(report.combinations)


def figures(dice: np.ndarray, names: list[str]) -> dict[str, float]:
    """The benchmark's figures from one model's ``[15, 3]`` Dice table."""
    members = [frozenset(n.split("+")) for n in names]
    row = {m: i for i, m in enumerate(members)}
    four = row[frozenset({"FLAIR", "T1ce", "T1", "T2"})]
    no_t2 = row[frozenset({"FLAIR", "T1ce", "T1"})]
    no_flair = row[frozenset({"T1ce", "T1", "T2"})]
    mean = np.nanmean(dice, axis=0)
    out = {}
    for r, region in enumerate(REGIONS):
        out[f"all four {region}"] = dice[four, r]
        out[f"15-mean {region}"] = mean[r]
        out[f"T2 adds {region}"] = dice[four, r] - dice[no_t2, r]
        out[f"FLAIR adds {region}"] = dice[four, r] - dice[no_flair, r]

    def gap(region: int, has) -> float:
        yes = [i for i, m in enumerate(members) if has(m)]
        no = [i for i, m in enumerate(members) if not has(m)]
        return float(np.mean(dice[yes, region]) - np.mean(dice[no, region]))

    out["ET gap (T1ce)"] = gap(2, lambda m: "T1ce" in m)
    out["WT gap (FLAIR or T2)"] = gap(0, lambda m: bool(m & {"FLAIR", "T2"}))
    return out


def fmt(values: list[float]) -> str:
    """Mean and spread (sd over seeds, and the range) of one figure."""
    a = np.asarray(values)
    if len(a) == 1:
        return f"{a[0]:6.1f}"
    return f"{a.mean():6.1f} ± {a.std(ddof=1):4.1f} [{a.min():5.1f}, {a.max():5.1f}]"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="data and training seeds (default 0)")
    p.add_argument("--steps", type=int, default=200, help="training steps of both models (default 200, the demo's)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--cases", type=int, default=SynthConfig().cases)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    demo = SynthConfig()
    register("backbone", "tiny", TinyNet)
    runs: dict[str, list[dict[str, float]]] = {"probe": [], "backbone": []}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for seed in args.seeds:
            cache = root / f"phantoms-{seed}.h5"
            write_synthetic_cache(str(cache), SynthSettings(cases=args.cases, shape=tuple(demo.shape), seed=seed),
                                  test_fraction=demo.test_fraction)
            common = [f"train.steps={args.steps}", f"train.threads={args.threads}", f"train.seed={seed}",
                      "train.log_every=100000"]
            for name, extra in (("probe", ["model.name=tiny", "model.options={}"]), ("backbone", [])):
                dice, names = train_and_evaluate(cache, root / f"{name}-{seed}", [*common, *extra])
                runs[name].append(figures(dice, names))
            probe, backbone = runs["probe"][-1], runs["backbone"][-1]
            print(f"seed {seed}: " + "; ".join(
                f"{key} {probe[key]:.1f} vs {backbone[key]:.1f}" for key in probe if key.startswith(("all", "15"))),
                flush=True)
    print(f"\n{args.steps} steps, {len(args.seeds)} seed(s) {args.seeds}: mean ± sd [min, max] over seeds\n")
    print(f"| {'figure':<22} | {'one-convolution probe':<30} | {'demo backbone':<30} | {'backbone - probe':<30} |")
    print(f"|{'-' * 24}|{'-' * 32}|{'-' * 32}|{'-' * 32}|")
    for key in runs["probe"][0]:
        if key.startswith(("T2", "FLAIR")):
            continue
        probe = [r[key] for r in runs["probe"]]
        backbone = [r[key] for r in runs["backbone"]]
        margin = [b - a for a, b in zip(probe, backbone, strict=True)] if not key.endswith(")") else []
        print(f"| {key:<22} | {fmt(probe):<30} | {fmt(backbone):<30} | {fmt(margin) if margin else '':<30} |")
    print("\nwhat the rare modalities add to the backbone (all four minus without the modality, Dice points):")
    for key in runs["backbone"][0]:
        if key.startswith(("T2", "FLAIR")):
            print(f"  {key:<16} {fmt([r[key] for r in runs['backbone']])}")


if __name__ == "__main__":
    main()
