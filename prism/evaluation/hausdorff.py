"""HD95 in millimetres between region masks, in two named conventions, with the empty-set conventions of BraTS.

``monai`` (the default): MONAI's ``compute_hausdorff_distance(percentile=95)``. The surface of a mask is its voxels
with at least one face neighbour outside it (the volume border counts as outside); ``d(A -> B)`` are the
Euclidean distances in mm from each surface voxel of A to the nearest surface voxel of B; HD95 = max(95th
percentile of d(P -> G), 95th percentile of d(G -> P)), percentiles with linear interpolation, every surface
voxel counting once. Computed by MONAI itself (``monai.metrics.utils.get_mask_edges`` and
``get_surface_distance``); prism only crops every mask to the foreground first and applies the empty-set rule.

``brats2023``: the BraTS 2023 challenge code's (BraTS-2023-Metrics, which calls DeepMind's surface-distance
``compute_surface_distances`` and ``compute_robust_hausdorff(percent=95)``). The surface is made of surface
elements at the corners of the voxel grid: a corner whose eight neighbouring voxels are neither all inside nor all
outside, weighted by the area of the marching-cubes surface in its 2x2x2 neighbourhood (spacing applied). Each
direction's distances are sorted and the 95th percentile is the first distance at which the cumulative area
reaches 95% of the surface's area; HD95 is the larger of the two directions. The elements and areas come from
MONAI's ``get_mask_edges(..., spacing=...)`` (its table of areas is DeepMind's). Where a small part of the
surface is far away, the two conventions differ most: a reference made of a ball of radius 8 voxels and a ball of
33 voxels whose centre is 18 voxels further on every axis, against the radius-8 ball alone: ``monai`` 0 mm (the
32 far voxels are under 5% of the surface voxels), ``brats2023`` 21.38 mm (the far ball holds over 5% of the
surface area).

Empty sets: prediction and reference both empty -> 0; exactly one empty -> ``empty_value``, by default the
convention's (``monai``: 373.13 mm, the diagonal of the 240 x 240 x 155 mm BraTS image; ``brats2023``: 374 mm, the
challenge code's value); ``float('nan')`` leaves such pairs out of the means.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from .options import BRATS2023_EMPTY_HD95, BRATS_EMPTY_HD95, HD95_CONVENTIONS, convention_empty_hd95

__all__ = ["BRATS2023_EMPTY_HD95", "BRATS_EMPTY_HD95", "HD95_CONVENTIONS", "area_weighted_percentile",
           "check_spacing", "hd95", "surface_distances"]


def check_spacing(spacing: Sequence[float]) -> tuple[float, float, float]:
    """The spacing as three floats; ValueError unless there are three, each finite and > 0 (a spacing of 0
    would make every distance 0 mm)."""
    values = tuple(float(s) for s in spacing)
    if len(values) != 3 or not all(math.isfinite(s) and s > 0 for s in values):
        raise ValueError(f"spacing must be three finite sizes > 0 in mm, got {list(spacing)}")
    return values  # type: ignore[return-value]


def area_weighted_percentile(distances: np.ndarray, areas: np.ndarray, q: float) -> float:
    """The ``q``-th percentile of ``distances`` with each distance weighted by its surface element's area.

    The distances are sorted; the result is the first distance at which the cumulative area reaches ``q`` % of the
    total (DeepMind's ``compute_robust_hausdorff``, the BraTS 2023 challenge's HD95). No interpolation.
    """
    order = np.argsort(distances, kind="stable")
    d, a = distances[order], areas[order]
    cumulative = np.cumsum(a) / a.sum()
    index = int(np.searchsorted(cumulative, q / 100.0))
    return float(d[min(index, d.size - 1)])


def surface_distances(pred: np.ndarray, target: np.ndarray, spacing: Sequence[float], convention: str = "monai"
                      ) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Directed surface distances in mm, each with its surface elements' weights, for two non-empty bool masks.

    Args:
        pred, target: bool ``[D, H, W]``, neither empty.
        spacing: voxel size in mm per axis.
        convention: ``"monai"`` (surface voxels, weight 1 each) or ``"brats2023"`` (surface elements at voxel
            corners, weighted by their area in mm^2).

    Returns:
        ``((d(pred -> target), weights of pred's elements), (d(target -> pred), weights of target's elements))``,
        float64 arrays.
    """
    from monai.metrics.utils import get_mask_edges, get_surface_distance

    sp = check_spacing(spacing)
    if convention == "monai":
        edges_p, edges_g = get_mask_edges(pred, target, crop=True)
        areas_p, areas_g = edges_p.astype(np.float64), edges_g.astype(np.float64)
    elif convention == "brats2023":
        edges_p, edges_g, areas_p, areas_g = get_mask_edges(pred, target, crop=True, spacing=sp)
    else:
        raise ValueError(f"unknown HD95 convention {convention!r} ({', '.join(HD95_CONVENTIONS)})")
    forward = np.asarray(get_surface_distance(edges_p, edges_g, "euclidean", sp), dtype=np.float64)
    backward = np.asarray(get_surface_distance(edges_g, edges_p, "euclidean", sp), dtype=np.float64)
    return ((forward, np.asarray(areas_p, dtype=np.float64)[edges_p]),
            (backward, np.asarray(areas_g, dtype=np.float64)[edges_g]))


def _pair_hd(pred: np.ndarray, target: np.ndarray, spacing: Sequence[float], convention: str,
             percentile: float) -> float:
    directions = surface_distances(pred, target, spacing, convention)
    if convention == "monai":  # linear interpolation, as MONAI's torch.quantile
        return max(float(np.percentile(d, percentile)) for d, _ in directions)
    return max(area_weighted_percentile(d, w, percentile) for d, w in directions)


def hd95(pred: torch.Tensor, target: torch.Tensor, spacing: Sequence[float] = (1.0, 1.0, 1.0), *,
         convention: str = "monai", percentile: float = 95.0, empty_value: float | None = None) -> torch.Tensor:
    """HD95 in mm for bool masks ``pred [C, R, D, H, W]`` against ``target [R, D, H, W]``: float64 ``[C, R]``.

    Args:
        pred: C predictions (e.g. one per modality combination) of R regions.
        target: the reference of the R regions.
        spacing: voxel size in mm per axis (finite, > 0).
        convention: ``"monai"`` or ``"brats2023"`` (see the module docstring).
        percentile: 95 for HD95; 100 gives the plain Hausdorff distance under ``monai``.
        empty_value: HD95 of a pair where exactly one set is empty (None: the convention's; NaN: left out).

    Returns:
        float64 ``[C, R]`` on the CPU.

    Raises:
        ValueError: shapes that do not match, an unknown convention or a spacing that is not positive.
    """
    if pred.dim() != 5 or target.dim() != 4 or pred.shape[1:] != target.shape:
        raise ValueError(f"hd95 expects pred [C, R, D, H, W] and target [R, D, H, W], got {tuple(pred.shape)} "
                         f"and {tuple(target.shape)}")
    empty = convention_empty_hd95(convention) if empty_value is None else float(empty_value)
    spacing = check_spacing(spacing)
    c, r = pred.shape[:2]
    result = torch.zeros(c, r, dtype=torch.float64)
    target = target.to(pred.device)
    union = pred.any(0) | target  # [R, ...]
    if not union.any():
        return result
    # crop every mask to the bounding box of all foreground, one voxel of margin (the border stays outside);
    # the distances are computed on the CPU, where MONAI's k-d tree search runs
    nz = union.any(0).nonzero()
    lo = (nz.min(0).values - 1).clamp_min(0)
    hi = nz.max(0).values + 2
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
    p = pred[(..., *box)].cpu().numpy().astype(bool, copy=False)
    g = target[(..., *box)].cpu().numpy().astype(bool, copy=False)
    pred_any = p.reshape(c, r, -1).any(-1)
    target_any = g.reshape(r, -1).any(-1)
    for ci in range(c):
        for ri in range(r):
            has_p, has_g = bool(pred_any[ci, ri]), bool(target_any[ri])
            if not has_p and not has_g:
                continue
            if has_p != has_g:
                result[ci, ri] = empty
                continue
            result[ci, ri] = _pair_hd(p[ci, ri], g[ri], spacing, convention, percentile)
    return result
