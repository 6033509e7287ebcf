"""Deep supervision: labels resampled to coarser decoder levels, the PRM loss and the per-modality (uni) loss."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F

from .segmentation import SegLossOptions

LabelResample = Literal["maxpool", "nearest"]
ModalityReduction = Literal["none", "per_modality", "total"]


def resample_labels(label: torch.Tensor, size: Sequence[int], mode: LabelResample = "maxpool") -> torch.Tensor:
    """Downsample integer labels ``[B, *spatial]`` to ``size`` by an integer factor per axis.

    ``"maxpool"`` (default) takes the largest label in each window, so a structure of even one voxel survives
    (with BraTS labels the smaller, nested regions have the higher indices); ``"nearest"`` keeps the first
    voxel of each window (what nearest-neighbour interpolation does at an integer factor).
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


def level_weights(num_levels: int, weights: Sequence[float] | None = None) -> list[float]:
    """Weights of the deep levels s = 1..num_levels: ``2^-s`` unless given."""
    if weights is None:
        return [2.0 ** -(s + 1) for s in range(num_levels)]
    if len(weights) < num_levels:
        raise ValueError(f"{len(weights)} deep-supervision weights for {num_levels} decoder levels")
    return [float(w) for w in weights[:num_levels]]


def deep_supervision_loss(levels: Sequence[torch.Tensor], label: torch.Tensor, *,
                          weights: Sequence[float] | None = None, label_resample: LabelResample = "maxpool",
                          options: SegLossOptions | None = None) -> torch.Tensor:
    """``sum_s w_s l(y^(s), y_s)`` per sample over coarser levels (list of ``[B, K, d, h, w]``, finest first).

    ``label`` ``[B, D, H, W]`` is resampled to each level (``resample_labels``); ``w_s = 2^-s`` by default.
    Returns ``[B]`` float32 (zeros when ``levels`` is empty).
    """
    options = options or SegLossOptions()
    total = label.new_zeros(label.shape[0], dtype=torch.float32)
    for logits, w in zip(levels, level_weights(len(levels), weights), strict=False):
        if logits.dim() != label.dim() + 1 or logits.shape[0] != label.shape[0]:
            raise ValueError(f"deep level {tuple(logits.shape)} does not match label {tuple(label.shape)}")
        total = total + w * options.per_sample(logits, resample_labels(label, logits.shape[2:], label_resample))
    return total


def prm_loss(deep: Sequence[torch.Tensor], label: torch.Tensor, *, weights: Sequence[float] | None = None,
             label_resample: LabelResample = "maxpool", options: SegLossOptions | None = None) -> torch.Tensor:
    """L_PRM: deep supervision of the fused decoder levels s >= 1, ``sum_s 2^-s l(y^(s), y)``, batch mean.

    Level 0 (the output) is L_fuse's and not counted again. deep: list of ``[B, K, d, h, w]``, finest first;
    label ``[B, D, H, W]``. Returns a scalar.
    """
    return deep_supervision_loss(deep, label, weights=weights, label_resample=label_resample,
                                 options=options).mean()


def _check_uni(uni: torch.Tensor, label: torch.Tensor, mask: torch.Tensor, what: str = "uni") -> None:
    if uni.dim() != label.dim() + 2 or uni.shape[0] != label.shape[0]:
        raise ValueError(f"{what} must be [B, M, K, ...spatial] for label {tuple(label.shape)}, "
                         f"got {tuple(uni.shape)}")
    if tuple(mask.shape) != tuple(uni.shape[:2]):
        raise ValueError(f"mask must be [B, M] = {tuple(uni.shape[:2])}, got {tuple(mask.shape)}")


def reduce_modalities(values: torch.Tensor, mask: torch.Tensor, reduction: ModalityReduction) -> torch.Tensor:
    """Zero the missing (sample, modality) entries of ``[B, M]`` values and reduce.

    ``"none"``: ``[B, M]``; ``"per_modality"``: ``[M]``, the batch mean (a missing entry counts as 0);
    ``"total"``: scalar, the sum of the per-modality values (``sum over available m``, batch mean).
    """
    values = values * mask.to(values.dtype)
    if reduction == "none":
        return values
    per_modality = values.mean(0)
    if reduction == "per_modality":
        return per_modality
    if reduction == "total":
        return per_modality.sum()
    raise ValueError(f"reduction must be 'none', 'per_modality' or 'total', got {reduction!r}")


def uni_loss(uni: torch.Tensor, label: torch.Tensor, mask: torch.Tensor, *,
             uni_deep: Sequence[torch.Tensor] | None = None, weights: Sequence[float] | None = None,
             label_resample: LabelResample = "maxpool", options: SegLossOptions | None = None,
             reduction: ModalityReduction = "total") -> torch.Tensor:
    """L_uni: segmentation loss of every available modality's own prediction, with optional deep supervision.

    Args:
        uni: per-modality logits ``[B, M, K, D, H, W]``.
        label: ``[B, D, H, W]`` class indices.
        mask: ``[B, M]`` bool, available modalities; missing ones contribute 0 and receive no gradient.
        uni_deep: coarser per-modality levels ``[B, M, K, d, h, w]`` (finest first), weighted ``2^-s``.
    Returns ``reduce_modalities(loss [B, M], mask, reduction)``; all M modalities go through one batched pass.
    """
    _check_uni(uni, label, mask)
    b, m = uni.shape[:2]

    def flat_label(lab: torch.Tensor) -> torch.Tensor:
        return lab.unsqueeze(1).expand(b, m, *lab.shape[1:]).reshape(b * m, *lab.shape[1:])

    options = options or SegLossOptions()
    per = options.per_sample(uni.flatten(0, 1), flat_label(label))
    if uni_deep:
        for lv in uni_deep:
            _check_uni(lv, label, mask, "uni_deep level")
        levels = [lv.flatten(0, 1) for lv in uni_deep]
        per = per + deep_supervision_loss(levels, flat_label(label), weights=weights,
                                          label_resample=label_resample, options=options)
    return reduce_modalities(per.view(b, m), mask, reduction)
