"""Region Dice for label maps, vectorised over combinations (no loops over voxels or classes)."""

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


def regions_for(labels: dict[int, str]) -> Regions:
    """BraTS regions for the BraTS label map, else one region per foreground label."""
    if labels == BRATS_LABELS:
        return BRATS_REGIONS
    fg = sorted(k for k in labels if k != 0)
    return Regions(tuple(labels[k] for k in fg), tuple(frozenset({k}) for k in fg))


def region_dice(pred: torch.Tensor, target: torch.Tensor, regions: Regions, num_classes: int, *,
                et_postprocess_voxels: int = 0) -> torch.Tensor:
    """Dice per prediction and region.

    pred: int ``[C, ...]`` (one label map per combination), target: int ``[...]``. Returns float64 ``[C, R]``.
    An empty prediction against an empty reference scores 1. With ``et_postprocess_voxels > 0`` and a region
    named ET, a prediction with fewer ET voxels than that counts as having none (BraTS post-processing).
    """
    table = regions.table(num_classes, pred.device)  # [R, K]
    p = table[:, pred.long()].flatten(2)  # [R, C, N]
    g = table[:, target.long()].flatten(1)[:, None, :]  # [R, 1, N]
    p_sum = p.sum(-1)
    if et_postprocess_voxels > 0 and "ET" in regions.names:
        r = regions.names.index("ET")
        small = p_sum[r] < et_postprocess_voxels
        p[r] = p[r] & ~small[:, None]
        p_sum = p.sum(-1)
    inter = (p & g).sum(-1).double()
    denom = (p_sum + g.sum(-1)).double()
    dice = torch.where(denom > 0, 2 * inter / denom.clamp_min(1), torch.ones_like(denom))
    return dice.T.contiguous()  # [C, R]
