"""Guided self-supervision (gss): a confidence-region teacher built from the available modality predictions."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .deep_supervision import ModalityReduction, reduce_modalities
from .distillation import Direction


def gss_teacher(probs: torch.Tensor, mask: torch.Tensor, *, anchor: int | None, high: float = 0.65,
                medium: float = 0.75, floor: float = 0.005, medium_weights: Sequence[float] | None = None
                ) -> torch.Tensor:
    """Teacher probabilities ``[B, K, ...]`` from per-modality probabilities ``[B, M, K, ...]`` (element-wise).

    For every sample, class and voxel: high region = the anchor modality (FLAIR) is available and its probability
    is > ``high``: take it. Medium = not high, at least one other modality available and every available other
    modality > ``medium``: their (``medium_weights``-weighted, default equal) mean. Low = the rest: the minimum
    over the available modalities. Then clamp to >= ``floor`` and renormalise over classes. No gradient.

    Args:
        probs: per-modality probabilities ``[B, M, K, *spatial]`` (detached here).
        mask: ``[B, M]`` bool, available modalities.
        anchor: index along M of the anchor modality whose confident voxels are taken as they are (FLAIR in the
            seeds' definition; the registered term finds it by name), or None: no high region.
        high: the anchor's probability above which a voxel is in the high region (0.65).
        medium: the probability every available other modality must exceed for the medium region (0.75).
        floor: the teacher is clamped to at least this, then renormalised (0.005).
        medium_weights: ``[M]`` weights of the medium region's mean (equal by default).
    Returns:
        Teacher probabilities ``[B, K, *spatial]`` (float32, summing to 1 over K).
    Raises:
        ValueError: shapes that do not match, an anchor index out of range, or medium_weights of the wrong length.
    """
    if probs.dim() < 3 or tuple(mask.shape) != tuple(probs.shape[:2]):
        raise ValueError(f"probs must be [B, M, K, ...] with mask [B, M], got {tuple(probs.shape)} and "
                         f"{tuple(mask.shape)}")
    b, m = mask.shape
    if anchor is not None and not 0 <= anchor < m:
        raise ValueError(f"anchor index {anchor} out of range for {m} modalities")
    probs = probs.detach().float()
    view = (b, m) + (1,) * (probs.dim() - 2)
    avail = mask.view(view)
    others = torch.ones(m, dtype=torch.bool, device=probs.device)
    if anchor is not None:
        others[anchor] = False
    other = avail & others.view(1, m, *([1] * (probs.dim() - 2)))  # [B, M, 1...]
    w = torch.ones(m, device=probs.device) if medium_weights is None else \
        torch.as_tensor(medium_weights, dtype=torch.float32, device=probs.device)
    if w.shape != (m,):
        raise ValueError(f"medium_weights must have {m} entries, got {tuple(w.shape)}")
    w_other = other.float() * w.view(1, m, *([1] * (probs.dim() - 2)))
    any_other = other.any(1)  # [B, 1...]
    all_confident = ((probs > medium) | ~other).all(1)  # [B, K, ...]
    medium_mean = (probs * w_other).sum(1) / w_other.sum(1).clamp_min(1e-12)
    low = torch.where(avail, probs, torch.ones_like(probs)).amin(1)
    teacher = low
    medium_region = all_confident & any_other
    if anchor is not None:
        high_region = (probs[:, anchor] > high) & mask[:, anchor].view(b, *([1] * (probs.dim() - 2)))
        medium_region = medium_region & ~high_region
    teacher = torch.where(medium_region, medium_mean, teacher)
    if anchor is not None:
        teacher = torch.where(high_region, probs[:, anchor], teacher)
    teacher = teacher.clamp_min(floor)
    return teacher / teacher.sum(1, keepdim=True)


def gss_loss(uni: torch.Tensor, mask: torch.Tensor, *, anchor: int | None, high: float = 0.65,
             medium: float = 0.75, floor: float = 0.005, medium_weights: Sequence[float] | None = None,
             direction: Direction = "student_teacher", reduction: ModalityReduction = "total") -> torch.Tensor:
    """GSS: KL of each available modality's prediction to the detached ``gss_teacher``, mean over voxels.

    Args:
        uni: per-modality logits ``[B, M, K, D, H, W]``.
        mask: ``[B, M]`` bool; only available modalities build the teacher and receive the loss.
        anchor: index along M of the anchor (high-confidence) modality, FLAIR in the seeds' definition, or None;
            high, medium, floor, medium_weights: see ``gss_teacher``.
        direction: ``"student_teacher"`` KL(p_m || teacher) (default) or ``"teacher_student"``.
        reduction: see ``reduce_modalities``.
    Returns:
        ``reduce_modalities(kl [B, M], mask, reduction)``.
    Raises:
        ValueError: shapes that do not match or an unknown direction (and see ``gss_teacher``).
    """
    if uni.dim() < 3 or tuple(mask.shape) != tuple(uni.shape[:2]):
        raise ValueError(f"uni must be [B, M, K, ...] with mask [B, M], got {tuple(uni.shape)} and "
                         f"{tuple(mask.shape)}")
    log_s = uni.float().log_softmax(2)
    teacher = gss_teacher(log_s.exp(), mask, anchor=anchor, high=high, medium=medium, floor=floor,
                          medium_weights=medium_weights)
    log_t = teacher.log().unsqueeze(1)
    if direction == "student_teacher":
        kl = (log_s.exp() * (log_s - log_t)).sum(2)
    elif direction == "teacher_student":
        kl = (log_t.exp() * (log_t - log_s)).sum(2)
    else:
        raise ValueError(f"direction must be 'student_teacher' or 'teacher_student', got {direction!r}")
    return reduce_modalities(kl.flatten(2).mean(-1), mask, reduction)
