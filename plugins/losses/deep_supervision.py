"""Deep supervision: labels resampled to coarser decoder levels, the PRM loss and the per-modality (uni) loss."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F

from .segmentation import SegLossOptions, upcast
from .targets import LabelResample, Targets, resample_labels, targets_for

__all__ = ["LabelResample", "ModalityReduction", "resample_labels", "level_weights", "level_losses",
           "deep_supervision_loss", "prm_loss", "reduce_modalities", "uni_loss", "Targets", "targets_for"]

ModalityReduction = Literal["none", "per_modality", "total"]


def level_weights(num_levels: int, weights: Sequence[float] | None = None) -> list[float]:
    """Weights of the deep levels s = 1..num_levels: ``2^-s`` unless given."""
    if weights is None:
        return [2.0 ** -(s + 1) for s in range(num_levels)]
    if len(weights) < num_levels:
        raise ValueError(f"{len(weights)} deep-supervision weights for {num_levels} decoder levels")
    return [float(w) for w in weights[:num_levels]]


def level_losses(levels: Sequence[torch.Tensor], targets: Targets, *, weights: Sequence[float] | None = None,
                 label_resample: LabelResample = "maxpool", options: SegLossOptions | None = None,
                 align_corners: bool = False) -> torch.Tensor:
    """``sum_s w_s l(y^(s), y_s)`` over coarser levels, each level's predictions scored in one batched call.

    Args:
        levels: list of ``[B, P, K, d, h, w]`` (P predictions per sample, e.g. fused and per-modality), finest
            first.
        targets: the batch's ``Targets`` (labels one-hot per level, shared).
        weights: ``w_s``, ``2^-s`` for s = 1.. by default.
        label_resample: ``"maxpool"``/``"nearest"``: the labels are resampled to each level;
            ``"upsample"`` (PASSION's code): each level's softmax probabilities are upsampled (trilinear) to the
            labels' resolution and scored there (the CE then takes the log of the clamped probabilities).
        align_corners: of that upsampling (PASSION's code: True).
    Returns:
        ``[B, P]`` float32 (zeros of ``[B, 1]`` when ``levels`` is empty).
    """
    options = options or SegLossOptions()
    b = targets.label.shape[0]
    total: torch.Tensor | None = None
    for logits, w in zip(levels, level_weights(len(levels), weights), strict=False):
        if logits.dim() != targets.label.dim() + 2 or logits.shape[0] != b:
            raise ValueError(f"deep level {tuple(logits.shape)} does not match label {tuple(targets.label.shape)}")
        if label_resample == "upsample":
            value = w * options.per_path_probs(upsample_probs(logits, targets.label.shape[1:],
                                                              align_corners=align_corners), targets.onehot())
        else:
            value = w * options.per_path(logits, targets.onehot(logits.shape[3:], label_resample))
        total = value if total is None else total + value
    return targets.label.new_zeros(b, 1, dtype=torch.float32) if total is None else total


def upsample_probs(logits: torch.Tensor, size: Sequence[int], class_dim: int = 2, *, align_corners: bool = False
                   ) -> torch.Tensor:
    """Softmax probabilities upsampled (linear/bilinear/trilinear) to ``size``.

    Args:
        logits: ``[B, P, K, *spatial]`` (classes along ``class_dim``); size: the target spatial size.
        align_corners: passed to ``F.interpolate`` (PASSION upsamples with True).
    Returns:
        ``[B, P, K, *size]`` float32 probabilities (float64 for float64 logits).
    """
    probs = upcast(logits).softmax(class_dim)
    if tuple(probs.shape[class_dim + 1:]) == tuple(size):
        return probs
    lead = probs.shape[:class_dim]
    mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[len(size)]
    up = F.interpolate(probs.flatten(0, class_dim - 1), size=tuple(int(s) for s in size), mode=mode,
                       align_corners=align_corners)
    return up.unflatten(0, lead)


def deep_supervision_loss(levels: Sequence[torch.Tensor], label: torch.Tensor, *,
                          weights: Sequence[float] | None = None, label_resample: LabelResample = "maxpool",
                          options: SegLossOptions | None = None, targets: Targets | None = None,
                          align_corners: bool = False) -> torch.Tensor:
    """``sum_s w_s l(y^(s), y_s)`` per sample over coarser levels (list of ``[B, K, d, h, w]``, finest first).

    Args:
        levels: the coarser levels' logits.
        label: ``[B, D, H, W]`` class indices, resampled to each level (``resample_labels``).
        weights: ``w_s``, ``2^-s`` by default.
        targets: the batch's shared ``Targets`` of ``label`` (built here when None).
        align_corners: of the upsampling with ``label_resample="upsample"``.
    Returns:
        ``[B]`` float32 (zeros when ``levels`` is empty).
    """
    targets = targets if targets is not None else Targets(label, _classes(levels, 1))
    return level_losses([lv.unsqueeze(1) for lv in levels], targets, weights=weights,
                        label_resample=label_resample, options=options, align_corners=align_corners)[:, 0]


def _classes(levels: Sequence[torch.Tensor], dim: int) -> int:
    return int(levels[0].shape[dim]) if len(levels) else 2


def prm_loss(deep: Sequence[torch.Tensor], label: torch.Tensor, *, weights: Sequence[float] | None = None,
             label_resample: LabelResample = "maxpool", options: SegLossOptions | None = None,
             targets: Targets | None = None, align_corners: bool = False) -> torch.Tensor:
    """L_PRM: deep supervision of the fused decoder levels s >= 1, ``sum_s 2^-s l(y^(s), y)``, batch mean.

    Level 0 (the output) is L_fuse's and not counted again.

    Args:
        deep: list of ``[B, K, d, h, w]``, finest first.
        label: ``[B, D, H, W]`` class indices.
        targets: the batch's shared ``Targets`` (optional).
    Returns:
        A scalar.
    """
    return deep_supervision_loss(deep, label, weights=weights, label_resample=label_resample, options=options,
                                 targets=targets, align_corners=align_corners).mean()


def _check_uni(uni: torch.Tensor, label: torch.Tensor, mask: torch.Tensor, what: str = "uni") -> None:
    if uni.dim() != label.dim() + 2 or uni.shape[0] != label.shape[0]:
        raise ValueError(f"{what} must be [B, M, K, ...spatial] for label {tuple(label.shape)}, "
                         f"got {tuple(uni.shape)}")
    if tuple(mask.shape) != tuple(uni.shape[:2]):
        raise ValueError(f"mask must be [B, M] = {tuple(uni.shape[:2])}, got {tuple(mask.shape)}")


def reduce_modalities(values: torch.Tensor, mask: torch.Tensor, reduction: ModalityReduction) -> torch.Tensor:
    """Zero the missing (sample, modality) entries of ``[B, M]`` values and reduce.

    Args:
        values: ``[B, M]``; mask: ``[B, M]`` bool.
        reduction: ``"none"``: ``[B, M]``; ``"per_modality"``: ``[M]``, the batch mean (a missing entry counts
            as 0); ``"total"``: scalar, the sum of the per-modality values (``sum over available m``, batch mean).
    Returns:
        The reduced values.
    Raises:
        ValueError: an unknown reduction.
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
             reduction: ModalityReduction = "total", targets: Targets | None = None,
             align_corners: bool = False) -> torch.Tensor:
    """L_uni: segmentation loss of every available modality's own prediction, with optional deep supervision.

    Args:
        uni: per-modality logits ``[B, M, K, D, H, W]``.
        label: ``[B, D, H, W]`` class indices.
        mask: ``[B, M]`` bool, available modalities; missing ones contribute 0 and receive no gradient.
        uni_deep: coarser per-modality levels ``[B, M, K, d, h, w]`` (finest first), weighted ``2^-s``.
        targets: the batch's shared ``Targets`` of ``label`` (optional).
        align_corners: of the upsampling with ``label_resample="upsample"``.
    Returns:
        ``reduce_modalities(loss [B, M], mask, reduction)``; all M modalities of a level go through one call.
    Raises:
        ValueError: shapes that do not match.
    """
    _check_uni(uni, label, mask)
    if uni_deep:
        for lv in uni_deep:
            _check_uni(lv, label, mask, "uni_deep level")
    targets = targets if targets is not None else Targets(label, uni.shape[2])
    options = options or SegLossOptions()
    per = options.per_path(uni, targets.onehot())
    if uni_deep:
        per = per + level_losses(list(uni_deep), targets, weights=weights, label_resample=label_resample,
                                 options=options, align_corners=align_corners)
    return reduce_modalities(per, mask, reduction)
