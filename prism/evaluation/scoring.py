"""Score a model on cases of a cache: every combination of a case predicted in batched passes, then measured.

A combination is scored for a case only when the case has all of its modalities; the (case, combination)
entries a case cannot supply are NaN and left out of every mean, and reports give each combination's case count.
Beside the metrics, each scored pair records what the model predicted (the share of voxels per label) and each case
the Dice a constant prediction of each label would get, so a collapsed model can be told from a poor one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from ..backbone import Backbone
from ..data.cache_reader import CacheReader
from ..errors import DataError
from ..modalities import enumerate_combinations
from .hausdorff import check_spacing, hd95
from .inference import predict_combinations
from .lesion import lesion_metrics
from .metrics import Regions, mask_dice, region_masks, regions_for
from .options import DEFAULTS, EvalOptions
from .results import EvalReport


def score_prediction(pred: torch.Tensor, label: torch.Tensor, regions: Regions, num_classes: int,
                     spacing: Sequence[float], options: EvalOptions) -> tuple[np.ndarray, np.ndarray | None]:
    """Dice ``[C, R]`` and HD95 ``[C, R]`` (None when off) of label maps ``pred [C, ...]`` against ``label``."""
    p, g = region_masks(pred, label, regions, num_classes, et_postprocess_voxels=options.et_postprocess_voxels)
    return _volume_scores(p, g, spacing, options)


def _volume_scores(p: torch.Tensor, g: torch.Tensor, spacing: Sequence[float], options: EvalOptions
                   ) -> tuple[np.ndarray, np.ndarray | None]:
    dice = mask_dice(p, g).cpu().numpy()
    if not options.compute_hd95:
        return dice, None
    return dice, hd95(p, g, spacing, convention=options.hd95_convention, empty_value=options.empty_hd95).numpy()


def label_fractions(pred: torch.Tensor, num_classes: int) -> torch.Tensor:
    """float64 ``[C, K]``: the share of voxels of each label map ``pred [C, ...]`` predicted as each label."""
    flat = pred.reshape(pred.shape[0], -1).long()
    counts = torch.zeros(flat.shape[0], num_classes, dtype=torch.float64, device=flat.device)
    counts.scatter_add_(1, flat.clamp(0, num_classes - 1), torch.ones_like(flat, dtype=torch.float64))
    return (counts / max(flat.shape[1], 1)).cpu()


def constant_prediction_dice(g: torch.Tensor, regions: Regions, num_classes: int) -> torch.Tensor:
    """float64 ``[K, R]``: the Dice of predicting label k in every voxel, per region of the reference ``g [R, ...]``.

    Label k everywhere predicts region r everywhere when k belongs to it (Dice 2|G| / (N + |G|)), else nowhere
    (Dice 0, or 1 when the reference has none of r either).
    """
    size = g[0].numel()
    ref = g.flatten(1).sum(1).double().cpu()  # [R]
    everywhere = 2 * ref / (size + ref)
    nowhere = (ref == 0).double()
    table = regions.table(num_classes)  # [R, K]
    return torch.where(table.T, everywhere[None], nowhere[None])


def _check_case(reader: CacheReader, case_id: str, spacing: Sequence[float]) -> None:
    try:
        check_spacing(spacing)
    except ValueError:
        raise DataError(f"{reader.path}: case {case_id}: spacing {list(spacing)} mm: every voxel size must be finite "
                        "and > 0 (HD95 and lesion volumes are measured with it)") from None


def scored_combinations(combination_masks: torch.Tensor, availability: Sequence[bool]) -> torch.Tensor:
    """bool ``[C]``: the combinations a case is scored on, those whose every modality the case has.

    A combination asking for a modality the case lacks is not scored for it (not run with the subset the case
    has), so each combination's row averages the same input over every case that can supply it.
    """
    available = torch.as_tensor(list(availability), dtype=torch.bool)
    return ~(combination_masks & ~available).any(1)


def evaluate_cases(model: Backbone, reader: CacheReader, case_ids: Sequence[str], *, device: torch.device,
                   amp_dtype: torch.dtype | None = None, options: EvalOptions = DEFAULTS,
                   on_case: Callable[[str], None] | None = None) -> EvalReport:
    """Dice (and HD95) per case, combination and region; every scored combination of a case in batched passes.

    A combination is scored for a case only when the case has every modality of it (see
    :func:`scored_combinations`); the others are NaN in the report and left out of its means.
    """
    combos = enumerate_combinations(reader.modalities)
    regions = regions_for(reader.labels)
    num_classes = max(reader.labels) + 1
    all_masks = torch.tensor([c.mask for c in combos])
    shape = (len(combos), len(regions.names))
    dice, hd, sites = [], [], []
    lesion_dice: list[np.ndarray] = []
    lesion_hd: list[np.ndarray] = []
    fractions: list[np.ndarray] = []
    constant: list[np.ndarray] = []
    brain: list[float] = []
    for case_id in case_ids:
        info = reader.info(case_id)
        _check_case(reader, case_id, info.spacing)
    for case_id in case_ids:
        info = reader.info(case_id)
        scored = scored_combinations(all_masks, info.availability)
        d, h = np.full(shape, np.nan), np.full(shape, np.nan)
        ld, lh = np.full(shape, np.nan), np.full(shape, np.nan)
        frac = np.full((len(combos), num_classes), np.nan)
        image, label = reader.read_case(case_id)
        available = torch.as_tensor(list(info.availability), dtype=torch.bool)
        brain.append(float(torch.from_numpy(image)[available].ne(0).any(0).double().mean()) if available.any()
                     else 0.0)
        label_t = torch.from_numpy(label).to(device)
        constant.append(constant_prediction_dice(
            region_masks(label_t[None], label_t, regions, num_classes)[1], regions, num_classes).numpy())
        if scored.any():
            pred = predict_combinations(model, torch.from_numpy(image), all_masks[scored], device=device,
                                        amp_dtype=amp_dtype, options=options)
            frac[scored.numpy()] = label_fractions(pred, num_classes).numpy()
            p, g = region_masks(pred.to(device), label_t, regions, num_classes,
                                et_postprocess_voxels=options.et_postprocess_voxels)
            d_scored, h_scored = _volume_scores(p, g, info.spacing, options)
            if options.lesion_metrics:
                ld[scored.numpy()], lh[scored.numpy()] = lesion_metrics(p, g, info.spacing)
            d[scored.numpy()] = d_scored
            if h_scored is not None:
                h[scored.numpy()] = h_scored
        dice.append(d)
        hd.append(h)
        fractions.append(frac)
        lesion_dice.append(ld)
        lesion_hd.append(lh)
        sites.append(info.site)
        if on_case is not None:
            on_case(case_id)
    empty = (0, *shape)
    return EvalReport(
        modalities=reader.modalities, regions=regions.names, combinations=[c.name for c in combos],
        case_ids=list(case_ids), dice=np.stack(dice) if dice else np.zeros(empty),
        hd95=(np.stack(hd) if hd else np.zeros(empty)) if options.compute_hd95 else None,
        sites=sites, combination_masks=[c.mask for c in combos], settings=options.settings(),
        lesion_dice=(np.stack(lesion_dice) if lesion_dice else np.zeros(empty)) if options.lesion_metrics else None,
        lesion_hd95=(np.stack(lesion_hd) if lesion_hd else np.zeros(empty)) if options.lesion_metrics else None,
        label_names=[reader.labels.get(k, str(k)) for k in range(num_classes)],
        label_fraction=np.stack(fractions) if fractions else np.zeros((0, len(combos), num_classes)),
        constant_dice=np.stack(constant) if constant else np.zeros((0, num_classes, len(regions.names))),
        brain_fraction=np.array(brain, dtype=np.float64),
    )
