"""Evaluate a model on every combination of every case of a split, and report it (JSON, Markdown, console)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..backbone import Backbone
from ..data.cache_reader import CacheReader
from ..modalities import enumerate_combinations
from .inference import predict_combinations
from .metrics import region_dice, regions_for


@dataclass
class EvalReport:
    modalities: tuple[str, ...]
    regions: tuple[str, ...]
    combinations: list[str]
    case_ids: list[str]
    dice: np.ndarray  # [cases, combinations, regions]

    def mean_dice(self) -> np.ndarray:
        """``[combinations, regions]``: mean over cases."""
        return self.dice.mean(0)

    def to_dict(self) -> dict[str, Any]:
        mean = self.mean_dice()
        return {
            "modalities": list(self.modalities),
            "regions": list(self.regions),
            "metric": "dice",
            "combinations": [
                {"index": i, "name": name, "dice": dict(zip(self.regions, map(float, mean[i]), strict=False))}
                for i, name in enumerate(self.combinations)
            ],
            "mean": dict(zip(self.regions, map(float, mean.mean(0)), strict=False)),
            "cases": {
                cid: {name: dict(zip(self.regions, map(float, self.dice[c, i]), strict=False))
                      for i, name in enumerate(self.combinations)}
                for c, cid in enumerate(self.case_ids)
            },
        }

    def markdown(self) -> str:
        mean = self.mean_dice() * 100
        head = "| # | Modalities | " + " | ".join(f"{r} Dice" for r in self.regions) + " |"
        rule = "|---|---|" + "---:|" * len(self.regions)
        rows = [f"| {i} | {name} | " + " | ".join(f"{v:.2f}" for v in mean[i]) + " |"
                for i, name in enumerate(self.combinations)]
        rows.append("| | **Mean** | " + " | ".join(f"**{v:.2f}**" for v in mean.mean(0)) + " |")
        return "\n".join([head, rule, *rows]) + "\n"

    def write(self, out_dir: Path) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "eval.json").write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        (out_dir / "eval.md").write_text(self.markdown())


def evaluate(model: Backbone, reader: CacheReader, case_ids: list[str] | tuple[str, ...], *, device: torch.device,
             amp_dtype: torch.dtype | None = None, et_postprocess_voxels: int = 0,
             combos_per_pass: int = 15, channels_last: bool = False) -> EvalReport:
    """Dice per case, combination and region for ``case_ids``; every combination of a case in batched passes."""
    combos = enumerate_combinations(reader.modalities)
    regions = regions_for(reader.labels)
    num_classes = max(reader.labels) + 1
    results = []
    for case_id in case_ids:
        image, label = reader.read_case(case_id)
        available = torch.tensor(reader.info(case_id).availability)
        masks = torch.tensor([c.mask for c in combos]) & available  # a missing file stays missing
        pred = predict_combinations(model, torch.from_numpy(image), masks, device=device, amp_dtype=amp_dtype,
                                    combos_per_pass=combos_per_pass, channels_last=channels_last)
        results.append(region_dice(pred, torch.from_numpy(label), regions, num_classes,
                                   et_postprocess_voxels=et_postprocess_voxels).numpy())
    return EvalReport(
        modalities=reader.modalities, regions=regions.names, combinations=[c.name for c in combos],
        case_ids=list(case_ids), dice=np.stack(results) if results else np.zeros((0, len(combos), len(regions.names))),
    )
