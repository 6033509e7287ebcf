"""Label targets shared by every loss term of a step: one-hot labels per decoder level, computed once per batch.

``targets_for(batch, num_classes)`` returns the batch's ``Targets`` (kept on the Batch object, rebuilt when its
label tensor changes), so the fuse, uni, PRM, separate-decoder and prototype terms of one step one-hot and pool the
labels once per level instead of once per call. One-hot encoding compares with ``arange`` (``F.one_hot`` reads the
label range back to the host on the CPU), so nothing here synchronises with the device.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F

from prism.loss import step_cache

#: How a coarser decoder level meets the labels: labels max-pooled (the seeds) or subsampled to the level, or the
#: level's probabilities upsampled (trilinear) to the labels (``"upsample"``, PASSION's code; see ``level_losses``).
LabelResample = Literal["maxpool", "nearest", "upsample"]


def onehot_labels(label: torch.Tensor, num_classes: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """One-hot encoding by comparison, without host syncs.

    Args:
        label: ``[B, *spatial]`` integer class indices (a value outside ``[0, num_classes)`` gives a zero row).
        num_classes: K.
        dtype: of the result.
    Returns:
        ``[B, K, *spatial]``.
    Raises:
        ValueError: floating-point labels.
    """
    if label.dtype.is_floating_point:
        raise ValueError(f"labels must hold integer class indices, got {label.dtype}")
    classes = torch.arange(num_classes, device=label.device, dtype=label.dtype)
    return (label.unsqueeze(1) == classes.view(1, num_classes, *([1] * (label.dim() - 1)))).to(dtype)


def resample_labels(label: torch.Tensor, size: Sequence[int], mode: LabelResample = "maxpool") -> torch.Tensor:
    """Downsample integer labels ``[B, *spatial]`` to ``size`` by an integer factor per axis.

    ``"maxpool"`` (default) takes the largest label in each window, so a structure of even one voxel survives
    (with BraTS labels the smaller, nested regions have the higher indices); ``"nearest"`` keeps the first
    voxel of each window (what nearest-neighbour interpolation does at an integer factor).

    Args:
        label: ``[B, *spatial]`` integer class indices; size: the target spatial size; mode: see above.
    Returns:
        ``[B, *size]`` labels (``label`` itself when the size is unchanged).
    Raises:
        ValueError: a size that is not an integer divisor of the label's, or an unknown mode.
    """
    spatial = tuple(label.shape[1:])
    size = tuple(int(s) for s in size)
    if len(size) != len(spatial) or not 1 <= len(size) <= 3:
        raise ValueError(f"cannot resample labels {tuple(label.shape)} to spatial size {size}")
    if any(s <= 0 or a % s for a, s in zip(spatial, size, strict=True)):
        raise ValueError(f"label size {spatial} is not an integer multiple of level size {size}")
    factors = tuple(a // s for a, s in zip(spatial, size, strict=True))
    if all(f == 1 for f in factors):
        return label
    if mode == "nearest":
        return label[(slice(None), *(slice(None, None, f) for f in factors))]
    if mode == "maxpool":
        pool = (F.max_pool1d, F.max_pool2d, F.max_pool3d)[len(size) - 1]
        return pool(label.unsqueeze(1).float(), factors, factors).squeeze(1).to(label.dtype)
    raise ValueError(f"label resampling mode must be 'maxpool' or 'nearest', got {mode!r}")


class Targets:
    """The one-hot labels of one batch at every spatial size asked for (each computed once).

    Args:
        label: ``[B, *spatial]`` class indices; num_classes: K.
    """

    def __init__(self, label: torch.Tensor, num_classes: int) -> None:
        if label.dtype.is_floating_point:
            raise ValueError(f"labels must hold integer class indices, got {label.dtype}")
        self.label = label
        self.num_classes = int(num_classes)
        self._onehot: dict[tuple[Any, ...], torch.Tensor] = {}

    def onehot(self, size: Sequence[int] | None = None, mode: LabelResample = "maxpool") -> torch.Tensor:
        """``[B, K, *size]`` float32 one-hot labels, resampled to ``size`` (default: the label's own)."""
        size = tuple(self.label.shape[1:]) if size is None else tuple(int(s) for s in size)
        if size == tuple(self.label.shape[1:]):
            mode = "maxpool"  # no resampling: one entry for the full resolution
        key = (size, mode)
        if key not in self._onehot:
            self._onehot[key] = onehot_labels(resample_labels(self.label, size, mode), self.num_classes)
        return self._onehot[key]


def targets_for(label: torch.Tensor, num_classes: int, owner: Any = None) -> Targets:
    """The ``Targets`` of ``label``, kept in ``owner``'s step cache (``prism.loss.step_cache``, a Batch) so that
    every term of one loss evaluation shares them; ``LossSet`` empties that cache before each evaluation.

    Args:
        label: ``[B, *spatial]`` class indices.
        num_classes: K.
        owner: the Batch holding ``label``; None builds uncached targets.
    Returns:
        Targets for ``label``; the cached one when ``owner`` already holds targets of this very tensor.
    """
    cache = None if owner is None else step_cache(owner)
    if cache is None:
        return Targets(label, num_classes)
    key = ("targets", num_classes)
    found = cache.get(key)
    if found is None or found.label is not label:
        found = cache[key] = Targets(label, num_classes)
    return found
