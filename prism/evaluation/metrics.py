"""Region masks and Dice for label maps, vectorised over combinations (no loops over voxels or classes)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..data.cache_format import BRATS_LABELS


@dataclass(frozen=True)
class Regions:
    """Evaluation regions as sets of labels (BraTS: WT = {1,2,3}, TC = {1,3}, ET = {3})."""

    names: tuple[str, ...]
    members: tuple[frozenset[int], ...]

    def table(self, num_classes: int, device: torch.device | str | None = None) -> torch.Tensor:
        """Bool ``[R, K]``: whether label k belongs to region r."""
        t = torch.zeros(len(self.names), num_classes, dtype=torch.bool, device=device)
        for r, members in enumerate(self.members):
            for k in members:
                t[r, k] = True
        return t


BRATS_REGIONS = Regions(("WT", "TC", "ET"), (frozenset({1, 2, 3}), frozenset({1, 3}), frozenset({3})))

#: BraTS post-processing: fewer predicted ET voxels than this count as no ET.
BRATS_ET_MIN_VOXELS = 500


def regions_for(labels: dict[int, str]) -> Regions:
    """BraTS regions for the BraTS label map, else one region per foreground label."""
    if labels == BRATS_LABELS:
        return BRATS_REGIONS
    fg = sorted(k for k in labels if k != 0)
    return Regions(tuple(labels[k] for k in fg), tuple(frozenset({k}) for k in fg))


def region_masks(pred: torch.Tensor, target: torch.Tensor, regions: Regions, num_classes: int, *,
                 et_postprocess_voxels: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Bool region masks: prediction ``[C, R, ...]`` and reference ``[R, ...]``.

    pred: int ``[C, ...]`` (one label map per combination), target: int ``[...]``. With
    ``et_postprocess_voxels > 0`` and a region named ET, a prediction with fewer ET voxels than that has its ET
    mask emptied (BraTS post-processing: those voxels become necrosis, so WT and TC are unchanged).
    """
    table = regions.table(num_classes, pred.device)  # [R, K]
    p = table[:, pred.long()].transpose(0, 1)  # [C, R, ...]
    g = table[:, target.long().to(pred.device)]  # [R, ...]
    if et_postprocess_voxels > 0 and "ET" in regions.names:
        r = regions.names.index("ET")
        small = p[:, r].flatten(1).sum(-1) < et_postprocess_voxels  # [C]
        p[:, r] &= ~small.view(-1, *([1] * (p.dim() - 2)))
    return p, g


def mask_dice(p: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Dice of bool masks ``p [C, R, ...]`` against ``g [R, ...]`` as float64 ``[C, R]``; empty vs empty is 1."""
    p = p.flatten(2)
    g = g.flatten(1).unsqueeze(0)
    inter = (p & g).sum(-1).double()
    denom = (p.sum(-1) + g.sum(-1)).double()
    return torch.where(denom > 0, 2 * inter / denom.clamp_min(1), torch.ones_like(denom))


def region_dice(pred: torch.Tensor, target: torch.Tensor, regions: Regions, num_classes: int, *,
                et_postprocess_voxels: int = 0) -> torch.Tensor:
    """Dice per prediction and region.

    pred: int ``[C, ...]`` (one label map per combination), target: int ``[...]``. Returns float64 ``[C, R]``.
    An empty prediction against an empty reference scores 1. With ``et_postprocess_voxels > 0`` and a region
    named ET, a prediction with fewer ET voxels than that counts as having none (BraTS post-processing).
    """
    p, g = region_masks(pred, target, regions, num_classes, et_postprocess_voxels=et_postprocess_voxels)
    return mask_dice(p, g)
