"""Score a model on cases of a cache: every combination of a case predicted in batched passes, then measured."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch

from ..backbone import Backbone
from ..data.cache_reader import CacheReader
from ..modalities import enumerate_combinations
from .hausdorff import BRATS_EMPTY_HD95, hd95
from .inference import predict_logits
from .metrics import Regions, mask_dice, region_masks, regions_for
from .results import EvalReport


@dataclass(frozen=True)
class EvalOptions:
    """How predictions are made and measured (see ``predict_logits`` and ``hd95``)."""

    window: tuple[int, int, int] | None = None  # None: whole volume at once
    overlap: float = 0.5
    sw_batch_size: int = 1
    sigma_scale: float = 0.125
    combos_per_pass: int = 15
    et_postprocess_voxels: int = 0
    compute_hd95: bool = True
    hd95_empty: float = BRATS_EMPTY_HD95  # NaN: pairs with exactly one empty set are left out of the means
    channels_last: bool = False
    stitch_on_cpu: bool = False  # blend sliding-window logits in host memory (large volumes, small GPUs)

    def settings(self) -> dict[str, object]:
        """For the report: JSON-safe (NaN as None)."""
        out = asdict(self)
        out["window"] = list(self.window) if self.window else None
        if math.isnan(self.hd95_empty):
            out["hd95_empty"] = None
        return out


@torch.no_grad()
def predict_case(model: Backbone, image: torch.Tensor, masks: torch.Tensor, *, device: torch.device,
                 amp_dtype: torch.dtype | None, options: EvalOptions) -> torch.Tensor:
    """Label maps ``[C, D, H, W]`` (uint8, on ``device``) for every mask, ``options.combos_per_pass`` per pass."""
    out = []
    step = max(1, options.combos_per_pass)
    for start in range(0, masks.shape[0], step):
        logits = predict_logits(
            model, image, masks[start:start + step], device=device, amp_dtype=amp_dtype,
            channels_last=options.channels_last, window=options.window, overlap=options.overlap,
            sw_batch_size=options.sw_batch_size, sigma_scale=options.sigma_scale,
            output_device=torch.device("cpu") if options.stitch_on_cpu else None,
        )
        out.append(logits.argmax(1).to(torch.uint8).to(device))
    return torch.cat(out)


def score_prediction(pred: torch.Tensor, label: torch.Tensor, regions: Regions, num_classes: int,
                     spacing: Sequence[float], options: EvalOptions) -> tuple[np.ndarray, np.ndarray | None]:
    """Dice ``[C, R]`` and HD95 ``[C, R]`` (None when off) of label maps ``pred [C, ...]`` against ``label``."""
    p, g = region_masks(pred, label, regions, num_classes, et_postprocess_voxels=options.et_postprocess_voxels)
    dice = mask_dice(p, g).cpu().numpy()
    if not options.compute_hd95:
        return dice, None
    return dice, hd95(p, g, spacing, empty_value=options.hd95_empty).numpy()


def evaluate_cases(model: Backbone, reader: CacheReader, case_ids: Sequence[str], *, device: torch.device,
                   amp_dtype: torch.dtype | None = None, options: EvalOptions = EvalOptions(),
                   on_case: Callable[[str], None] | None = None) -> EvalReport:
    """Dice (and HD95) per case, combination and region; every combination of a case in batched passes.

    A combination that asks for a modality the case lacks on disk is evaluated with what the case has.
    """
    combos = enumerate_combinations(reader.modalities)
    regions = regions_for(reader.labels)
    num_classes = max(reader.labels) + 1
    all_masks = torch.tensor([c.mask for c in combos])
    dice, hd, sites = [], [], []
    for case_id in case_ids:
        image, label = reader.read_case(case_id)
        info = reader.info(case_id)
        masks = all_masks & torch.tensor(info.availability)
        pred = predict_case(model, torch.from_numpy(image), masks, device=device, amp_dtype=amp_dtype,
                            options=options)
        d, h = score_prediction(pred, torch.from_numpy(label).to(device), regions, num_classes, info.spacing,
                                options)
        dice.append(d)
        if h is not None:
            hd.append(h)
        sites.append(info.site)
        if on_case is not None:
            on_case(case_id)
    shape = (0, len(combos), len(regions.names))
    return EvalReport(
        modalities=reader.modalities, regions=regions.names, combinations=[c.name for c in combos],
        case_ids=list(case_ids), dice=np.stack(dice) if dice else np.zeros(shape),
        hd95=(np.stack(hd) if hd else np.zeros(shape)) if options.compute_hd95 else None,
        sites=sites, combination_masks=[c.mask for c in combos], settings=options.settings(),
    )
