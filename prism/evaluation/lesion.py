"""Lesion-wise Dice and HD95 as the BraTS 2023 challenge code computes them (per region, per case).

The definition is that of the challenge's evaluation code (BraTS-2023-Metrics, ``metrics.py``,
``get_LesionWiseResults``), glioma settings by default; prism names it ``brats2023`` in every report:

1. Reference lesions are the 26-connected components of the region's reference mask; components that fall in one
   connected component of the reference dilated ``dilation`` times (18-neighbourhood structuring element) are
   merged into one lesion, so satellites next to a lesion are not counted as separate lesions.
2. Each lesion is dilated the same way; every 26-connected component of the prediction that touches the dilated
   lesion is matched to it (one component may be matched to several lesions). The lesion's Dice and HD95 compare
   the lesion with the union of its matched components (no match: Dice 0, HD95 ``missed_hd95`` = 374 mm). The
   HD95 is the challenge's surface-area-weighted one (:mod:`prism.evaluation.hausdorff`, ``brats2023``).
3. Predicted components matched to no lesion are false positives: each adds a Dice 0 and an HD95 of 374.
4. Lesions of at most ``min_volume`` mm^3 are left out (whether found or missed).
5. Lesion-wise Dice = sum of the kept lesions' Dice / (kept lesions + false positives); lesion-wise HD95 likewise
   with 374 per false positive. No kept lesion and no false positive: Dice 1, HD95 0.

Not panoptica's metric. The BraTS evaluation package now on PyPI (``brats-evaluation``, built on panoptica)
computes another lesion-wise metric: lesions matched one to one (a prediction and a reference component matched
when their Dice is above 0), no merging by dilation, no volume threshold, and the mean taken over matched lesions
only, so it gives other numbers than the challenge code on the same masks. panoptica (2.1 series) pins
numpy < 2.3 and rich < 14, which prism's environment (numpy 2.4, rich 15) cannot hold, so it is not offered as an
option.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .hausdorff import hd95
from .options import BRATS2023_EMPTY_HD95

BRATS_MISSED_HD95 = BRATS2023_EMPTY_HD95


@dataclass(frozen=True)
class LesionSettings:
    """BraTS-GLI defaults: 3 dilations, lesions of at most 50 mm^3 left out, 374 mm for a miss."""

    dilation: int = 3
    min_volume: float = 50.0
    missed_hd95: float = BRATS_MISSED_HD95


@dataclass(frozen=True)
class LesionScores:
    """One region of one case: lesion-wise Dice and HD95 and the counts behind them."""

    dice: float
    hd95: float
    lesions: int  # kept reference lesions
    detected: int  # kept lesions with at least one matched predicted component
    false_positives: int


def _components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    from scipy import ndimage

    return ndimage.label(mask, structure=np.ones((3, 3, 3), dtype=bool))  # 26-connectivity


def _dilate(mask: np.ndarray, iterations: int) -> np.ndarray:
    from scipy import ndimage

    if iterations <= 0:
        return mask
    return ndimage.binary_dilation(mask, structure=ndimage.generate_binary_structure(3, 2), iterations=iterations)


def reference_lesions(reference: np.ndarray, dilation: int) -> tuple[np.ndarray, int]:
    """Label map of the reference lesions (components merged when their dilations connect) and their count."""
    components, n = _components(reference)
    if n == 0:
        return components, 0
    groups, count = _components(_dilate(reference, dilation))
    return np.where(reference, groups, 0), count


def lesion_scores(pred: np.ndarray, reference: np.ndarray, spacing: Sequence[float] = (1.0, 1.0, 1.0),
                  settings: LesionSettings = LesionSettings()) -> LesionScores:
    """Lesion-wise Dice and HD95 of bool masks ``pred`` and ``reference`` ``[D, H, W]`` (see the module docstring).

    Args:
        pred, reference: one region's masks.
        spacing: voxel size in mm (volumes in mm^3 and distances in mm use it).
        settings: dilation, volume threshold and the HD95 of a miss.

    Returns:
        :class:`LesionScores`.
    """
    pred = np.asarray(pred, dtype=bool)
    reference = np.asarray(reference, dtype=bool)
    voxel = float(np.prod(spacing))
    lesions, n_lesions = reference_lesions(reference, settings.dilation)
    pred_cc, n_pred = _components(pred)
    matched: set[int] = set()
    dices, hds = [], []
    detected = 0
    for k in range(1, n_lesions + 1):
        lesion = lesions == k
        touching = np.unique(pred_cc[_dilate(lesion, settings.dilation) & (pred_cc > 0)])
        matched.update(int(t) for t in touching)
        if lesion.sum() * voxel <= settings.min_volume:
            continue
        if touching.size == 0:
            dices.append(0.0)
            hds.append(settings.missed_hd95)
            continue
        detected += 1
        found = np.isin(pred_cc, touching)
        dices.append(2.0 * float((found & lesion).sum()) / float(found.sum() + lesion.sum()))
        value = hd95(torch.from_numpy(found)[None, None], torch.from_numpy(lesion)[None], spacing,
                     convention="brats2023", empty_value=settings.missed_hd95)
        hds.append(min(float(value[0, 0]), settings.missed_hd95))
    false_positives = n_pred - len(matched)
    total = len(dices) + false_positives
    if total == 0:
        return LesionScores(dice=1.0, hd95=0.0, lesions=0, detected=0, false_positives=0)
    return LesionScores(dice=sum(dices) / total, hd95=(sum(hds) + settings.missed_hd95 * false_positives) / total,
                        lesions=len(dices), detected=detected, false_positives=false_positives)


def lesion_metrics(pred: torch.Tensor, reference: torch.Tensor, spacing: Sequence[float] = (1.0, 1.0, 1.0),
                   settings: LesionSettings = LesionSettings()) -> tuple[np.ndarray, np.ndarray]:
    """Lesion-wise Dice and HD95 ``[C, R]`` of bool masks ``pred [C, R, D, H, W]`` against ``reference
    [R, D, H, W]`` (C predictions, e.g. one per modality combination; R regions)."""
    p = pred.cpu().numpy().astype(bool)
    g = reference.cpu().numpy().astype(bool)
    dice = np.zeros(p.shape[:2])
    hd = np.zeros(p.shape[:2])
    for c in range(p.shape[0]):
        for r in range(p.shape[1]):
            s = lesion_scores(p[c, r], g[r], spacing, settings)
            dice[c, r], hd[c, r] = s.dice, s.hd95
    return dice, hd
