"""Resampling to a common voxel spacing (``prism-data preprocess --spacing``) and back to the original grid.

Images are interpolated with cubic B-splines (order 3), label maps by nearest neighbour (order 0: no label value is
ever invented), as nnU-Net resamples images and (its non-anisotropic default aside) segmentations. Built on
``scipy.ndimage.zoom`` with ``grid_mode=True``: it maps voxel *extents* onto each other (the output voxel ``j`` of
``n_out`` covers the same millimetres as ``[j, j + 1) * n_in / n_out`` of the input), so the volume's physical extent
and origin corner are kept and a resampling to the original shape puts every voxel back where it was; edges are
extended (``mode="nearest"``). scipy rather than MONAI's ``Spacing``: this works on the cropped NumPy arrays the
preprocessing already holds, needs no affine bookkeeping in MetaTensors (the cache keeps the original affine, the
crop box and both spacings), and MONAI's own order-3 path calls the same scipy spline code.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage


def resampled_shape(shape: Sequence[int], spacing: Sequence[float], target: Sequence[float]) -> tuple[int, ...]:
    """The shape that covers the same extent at ``target`` spacing: ``round(n * spacing / target)``, at least 1.

    >>> resampled_shape((100, 80, 40), (1.0, 1.0, 2.5), (1.0, 1.0, 1.0))
    (100, 80, 100)
    """
    return tuple(max(1, int(round(n * s / t))) for n, s, t in zip(shape, spacing, target, strict=True))


def resample_to_shape(volume: np.ndarray, shape: Sequence[int], *, order: int) -> np.ndarray:
    """Resample the last three axes of ``volume`` (``[..., D, H, W]``) to ``shape``.

    Args:
        volume: the array; leading axes (e.g. channels) are resampled one by one.
        shape: the output's last three sizes.
        order: spline order: 3 for images, 0 (nearest neighbour) for label maps, 1 for probabilities.

    Returns:
        An array of shape ``[..., *shape]`` and the input's dtype (floats are interpolated in float64 and cast back).
    """
    shape = tuple(int(s) for s in shape)
    if tuple(volume.shape[-3:]) == shape:
        return volume.copy()
    zoom = [n_out / n_in for n_out, n_in in zip(shape, volume.shape[-3:], strict=True)]
    out = np.empty((*volume.shape[:-3], *shape), dtype=volume.dtype)
    for index in np.ndindex(*volume.shape[:-3]):
        src = volume[index]
        work = src if order == 0 else src.astype(np.float64)
        res = ndimage.zoom(work, zoom, order=order, mode="nearest", grid_mode=True, prefilter=order > 1)
        if res.shape != shape:  # zoom rounds n_in * zoom; a float error could miss by one
            raise ValueError(f"resampling gave {res.shape}, expected {shape}")
        out[index] = res
    return out


def resample_image(image: np.ndarray, shape: Sequence[int], brain: np.ndarray | None = None) -> np.ndarray:
    """Cubic-spline resampling of a ``[M, D, H, W]`` image to ``shape``; voxels outside the nearest-neighbour
    resampled ``brain`` mask (``[D, H, W]`` bool) are set to zero, so the background stays exactly zero (a spline
    rings next to the brain's edge)."""
    out = resample_to_shape(image, shape, order=3)
    if brain is not None:
        out[:, ~resample_to_shape(brain, shape, order=0)] = 0
    return out


def resample_labels(label: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Nearest-neighbour resampling of a label map to ``shape``: every output value is an input value."""
    return resample_to_shape(label, shape, order=0)
