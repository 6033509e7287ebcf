"""HD95 in millimetres between region masks, with the BraTS conventions for empty sets.

Definition (the one MONAI's ``compute_hausdorff_distance(percentile=95)`` and the BraTS 2023 evaluation use):
the surface of a mask is its voxels with at least one face neighbour outside it (the volume border counts as
outside); ``d(A -> B)`` are the Euclidean distances in mm (voxel spacing applied) from each surface voxel of A
to the nearest surface voxel of B; HD95 = max(95th percentile of d(P -> G), 95th percentile of d(G -> P)),
percentiles with linear interpolation.

Empty sets (BraTS): prediction and reference both empty -> 0; exactly one empty -> ``empty_value``, by default
373.13 mm, the diagonal of the 240 x 240 x 155 mm BraTS image (pass ``float('nan')`` to leave such pairs out of
the means instead).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .options import BRATS_EMPTY_HD95

#: Diagonal of the BraTS image in mm, the HD95 of a pair where exactly one of prediction and reference is empty.

_CHUNK_ELEMENTS = 1 << 24  # pairwise distances computed per chunk


def surface_voxels(mask: torch.Tensor) -> torch.Tensor:
    """Bool mask of the surface of ``mask [..., D, H, W]``: voxels with a face neighbour outside (or the border)."""
    inner = mask.clone()
    for axis in (-3, -2, -1):
        n = mask.shape[axis]
        if n < 2:
            inner.zero_()
            break
        inner.narrow(axis, 1, n - 1).logical_and_(mask.narrow(axis, 0, n - 1))
        inner.narrow(axis, 0, n - 1).logical_and_(mask.narrow(axis, 1, n - 1))
        inner.narrow(axis, 0, 1).zero_()
        inner.narrow(axis, n - 1, 1).zero_()
    return mask & ~inner


def _nearest_distances_cdist(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """For each point of ``src [n, 3]`` (mm) the distance to the nearest point of ``dst [m, 3]``, by brute force.

    The nearest point is found with chunked ``cdist`` and its distance recomputed directly, so the result does
    not carry the cancellation error of cdist's matrix-product form. Fast on a GPU.
    """
    out = torch.empty(src.shape[0], dtype=src.dtype, device=src.device)
    chunk = max(1, _CHUNK_ELEMENTS // max(dst.shape[0], 1))
    for start in range(0, src.shape[0], chunk):
        a = src[start:start + chunk]
        nearest = torch.cdist(a, dst).argmin(1)
        out[start:start + chunk] = (a - dst[nearest]).norm(dim=1)
    return out


def _nearest_distances_kdtree(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """The same with a k-d tree (scipy): O(n log m), the fast route on a CPU."""
    from scipy.spatial import cKDTree

    dist, _ = cKDTree(dst.cpu().numpy()).query(src.cpu().numpy(), k=1)
    return torch.from_numpy(np.asarray(dist, dtype=np.float64))


def _has_scipy() -> bool:
    try:
        import scipy.spatial  # noqa: F401
    except ImportError:
        return False
    return True


def nearest_distances(src: torch.Tensor, dst: torch.Tensor, method: str = "auto") -> torch.Tensor:
    """Distance from each point of ``src [n, 3]`` to the nearest of ``dst [m, 3]``.

    ``method``: "kdtree" (scipy), "cdist" (torch, chunked brute force) or "auto" (k-d tree for CPU tensors when
    scipy is installed, else cdist).
    """
    if method == "auto":
        method = "kdtree" if src.device.type == "cpu" and _has_scipy() else "cdist"
    if method == "kdtree":
        return _nearest_distances_kdtree(src, dst).to(src.device, src.dtype)
    if method == "cdist":
        return _nearest_distances_cdist(src, dst)
    raise ValueError(f"unknown nearest-distance method '{method}' (kdtree, cdist, auto)")


def _directed(a_surface: torch.Tensor, b_surface: torch.Tensor, spacing: torch.Tensor, method: str) -> torch.Tensor:
    """Distances from every surface voxel of A to the surface of B (zero where the surfaces share a voxel)."""
    shared = a_surface & b_surface
    only_a = (a_surface & ~b_surface).nonzero().to(spacing.dtype) * spacing
    b_points = b_surface.nonzero().to(spacing.dtype) * spacing
    zeros = torch.zeros(int(shared.sum()), dtype=spacing.dtype, device=spacing.device)
    if only_a.shape[0] == 0:
        return zeros
    return torch.cat([zeros, nearest_distances(only_a, b_points, method)])


def _percentile(d: torch.Tensor, q: float) -> float:
    return float(np.percentile(d.double().cpu().numpy(), q))


def hd95(pred: torch.Tensor, target: torch.Tensor, spacing: Sequence[float] = (1.0, 1.0, 1.0), *,
         percentile: float = 95.0, empty_value: float = BRATS_EMPTY_HD95, method: str = "auto") -> torch.Tensor:
    """HD95 in mm for bool masks ``pred [C, R, D, H, W]`` against ``target [R, D, H, W]``: float64 ``[C, R]``.

    Both empty -> 0; exactly one empty -> ``empty_value`` (see the module docstring). ``method``: how nearest
    surface points are found (see :func:`nearest_distances`); every method gives the same values.
    """
    if pred.dim() != 5 or target.dim() != 4 or pred.shape[1:] != target.shape:
        raise ValueError(f"hd95 expects pred [C, R, D, H, W] and target [R, D, H, W], got {tuple(pred.shape)} "
                         f"and {tuple(target.shape)}")
    c, r = pred.shape[:2]
    result = torch.zeros(c, r, dtype=torch.float64)
    target = target.to(pred.device)
    union = pred.any(0) | target  # [R, ...]
    if not union.any():
        return result
    # crop every mask to the bounding box of all foreground (one voxel of margin keeps borders meaningful)
    nz = union.any(0).nonzero()
    lo = (nz.min(0).values - 1).clamp_min(0)
    hi = nz.max(0).values + 2
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
    pred, target = pred[(..., *box)], target[(..., *box)]
    pred_surface = surface_voxels(pred)
    target_surface = surface_voxels(target)
    dtype = torch.float64 if pred.device.type == "cpu" else torch.float32
    sp = torch.tensor([float(s) for s in spacing], dtype=dtype, device=pred.device)
    pred_any = pred.flatten(2).any(-1).cpu()
    target_any = target.flatten(1).any(-1).cpu()
    for ci in range(c):
        for ri in range(r):
            has_p, has_g = bool(pred_any[ci, ri]), bool(target_any[ri])
            if not has_p and not has_g:
                continue
            if has_p != has_g:
                result[ci, ri] = empty_value
                continue
            forward = _directed(pred_surface[ci, ri], target_surface[ri], sp, method)
            backward = _directed(target_surface[ri], pred_surface[ci, ri], sp, method)
            result[ci, ri] = max(_percentile(forward, percentile), _percentile(backward, percentile))
    return result
