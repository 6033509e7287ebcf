"""Pixel-wise self-distillation (pixel_kl): every modality's prediction against the fused one, over decoder levels."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F

from .deep_supervision import ModalityReduction, reduce_modalities
from .segmentation import upcast

Direction = Literal["student_teacher", "teacher_student"]
DeepResample = Literal["native", "upsample"]
ClassReduction = Literal["sum", "mean"]

#: Presets: the seeds' definition (default) and PASSION's implementation (its direction and class mean).
PIXEL_KL_VARIANTS: dict[str, dict[str, object]] = {
    "seeds": {"direction": "student_teacher", "class_reduction": "sum"},
    "passion": {"direction": "teacher_student", "class_reduction": "mean"},
}


def kl_map(student_logits: torch.Tensor, teacher_logits: torch.Tensor, *, temperature: float = 1.0,
           direction: Direction = "student_teacher", class_reduction: ClassReduction = "sum",
           class_dim: int = 1) -> torch.Tensor:
    """Voxel-wise KL between ``softmax(student / T)`` and ``softmax(teacher / T)`` along ``class_dim`` (float32;
    float64 for float64 logits).

    Args:
        student_logits, teacher_logits: logits that broadcast against each other, classes along ``class_dim``.
        temperature: T > 0.
        direction: ``"student_teacher"``: KL(p_s || p_t); ``"teacher_student"``: KL(p_t || p_s).
        class_reduction: the class dimension is summed (``"sum"``) or averaged (``"mean"``) away.
    Returns:
        The broadcast shape without ``class_dim``.
    Raises:
        ValueError: a non-positive temperature, an unknown direction or class reduction.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    log_s = (upcast(student_logits) / temperature).log_softmax(class_dim)
    log_t = (upcast(teacher_logits) / temperature).log_softmax(class_dim)
    return _directed_kl(log_s, log_t, None, None, direction, class_reduction, class_dim)


def kl_probs(p_s: torch.Tensor, p_t: torch.Tensor, *, floor: float, direction: Direction = "student_teacher",
             class_reduction: ClassReduction = "sum", class_dim: int = 1, clamped_weight: bool = False
             ) -> torch.Tensor:
    """``kl_map`` on probabilities, each clamped to at least ``floor`` before the log (PASSION clamps at 0.005).

    ``p (log p - log q)``: inside the logs both probabilities are clamped; the weight ``p`` (the teacher's in
    ``"teacher_student"``) is the unclamped probability, or with ``clamped_weight=True`` the clamped one, as
    PASSION's code computes it (``pred_t = clamp(p_t, 0.005)``, then ``pred_t * (log pred_t - log pred_s)``;
    Jun-Jie-Shi/PASSION, code/utils/criterions.py, ``temp_kl_loss``).

    Args:
        p_s, p_t: student and teacher probabilities that broadcast, classes along ``class_dim``.
        floor: the clamp; direction, class_reduction: as ``kl_map``.
        clamped_weight: weight by the clamped probability (see above).
    Returns:
        The broadcast shape without ``class_dim``.
    Raises:
        ValueError: an unknown direction or class reduction.
    """
    q_s, q_t = p_s.clamp_min(floor), p_t.clamp_min(floor)
    log_s, log_t = q_s.log(), q_t.log()
    if clamped_weight:
        p_s, p_t = q_s, q_t
    return _directed_kl(log_s, log_t, p_s, p_t, direction, class_reduction, class_dim)


def _directed_kl(log_s: torch.Tensor, log_t: torch.Tensor, p_s: torch.Tensor | None, p_t: torch.Tensor | None,
                 direction: str, class_reduction: str, class_dim: int) -> torch.Tensor:
    """The KL of ``kl_map`` and ``kl_probs``: ``p (log p - log q)`` in the chosen direction, reduced over classes.
    A missing probability is ``exp`` of its log (computed only for the direction that needs it)."""
    if direction == "student_teacher":
        kl = (log_s.exp() if p_s is None else p_s) * (log_s - log_t)
    elif direction == "teacher_student":
        kl = (log_t.exp() if p_t is None else p_t) * (log_t - log_s)
    else:
        raise ValueError(f"direction must be 'student_teacher' or 'teacher_student', got {direction!r}")
    if class_reduction == "sum":
        return kl.sum(class_dim)
    if class_reduction == "mean":
        return kl.mean(class_dim)
    raise ValueError(f"class_reduction must be 'sum' or 'mean', got {class_reduction!r}")


def _upsample(probs: torch.Tensor, size: tuple[int, ...], align_corners: bool) -> torch.Tensor:
    """``[N, K, *spatial]`` -> ``[N, K, *size]`` (linear/bilinear/trilinear)."""
    mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[len(size)]
    return F.interpolate(probs, size=size, mode=mode, align_corners=align_corners)


def _check_pair(student: torch.Tensor, teacher: torch.Tensor, what: str) -> None:
    if student.dim() != teacher.dim() + 1 or student.shape[0] != teacher.shape[0] or \
            student.shape[2:] != teacher.shape[1:]:
        raise ValueError(f"{what}: student must be [B, M, K, ...] for teacher [B, K, ...] = "
                         f"{tuple(teacher.shape)}, got {tuple(student.shape)}")


def pixel_kl_loss(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor, *,
                  student_deep: Sequence[torch.Tensor] | None = None,
                  teacher_deep: Sequence[torch.Tensor] | None = None,
                  student_region0: torch.Tensor | None = None, teacher_region0: torch.Tensor | None = None,
                  temperature: float = 4.0, direction: Direction = "student_teacher",
                  class_reduction: ClassReduction = "sum", scale_by_temperature: bool = True,
                  detach_teacher: bool = True, prob_floor: float | None = None, clamped_weight: bool = False,
                  deep_resample: DeepResample = "native", deep_weights: Sequence[float] | None = None,
                  region0_weight: float = 0.0, align_corners: bool = False,
                  reduction: ModalityReduction = "total") -> torch.Tensor:
    """L_pixel^m = mu^2 sum_l w_l mean_voxels KL(softmax(z^{m,l}/mu) || softmax(z^l/mu)) per available modality m.

    Args:
        student: per-modality logits ``[B, M, K, D, H, W]`` (``uni``).
        teacher: fused logits ``[B, K, D, H, W]``; detached unless ``detach_teacher=False``.
        mask: ``[B, M]`` bool; missing modalities contribute 0 and receive no gradient.
        student_deep / teacher_deep: the coarser levels (``uni_deep`` / ``deep``), added in when both are given.
        student_region0 / teacher_region0: full-resolution region-map logits (``[B, M, K, ...]`` / ``[B, K, ...]``;
            RFNet's ``uni_region0`` / ``region0``), added in with weight ``region0_weight`` when both are given
            and the weight is not 0 (PASSION: 1/2).
        direction, class_reduction: the seeds' definition by default; PASSION's is ``teacher_student`` and
            ``mean`` (see ``PIXEL_KL_VARIANTS``).
        scale_by_temperature: multiply by ``mu^2`` (default), so that the gradient of the softened KL keeps its
            magnitude as mu changes (Hinton et al. 2015, "Distilling the Knowledge in a Neural Network", sec. 2;
            PASSION's code does the same); False gives the unscaled KL.
        prob_floor: None (the seeds: exact log-softmax) or PASSION's 0.005: both probabilities are clamped to at
            least this before the log.
        clamped_weight: with ``prob_floor``, the KL's weighting probability is the clamped one too (PASSION's
            code; see ``kl_probs``).
        deep_resample: ``"native"`` (the seeds): each coarser level compared at its own resolution;
            ``"upsample"`` (PASSION's code): both levels' softmax probabilities upsampled to the output's
            resolution first.
        deep_weights: the weight of each coarser level, finest first (None: 1 each, the seeds' sum; PASSION:
            1/4, 1/8, 1/16 with the full-resolution region map at 1/2).
        region0_weight: the weight of the full-resolution region-map pair (0: not used).
        align_corners: the upsampling's ``align_corners`` (PASSION: True).
        reduction: see ``reduce_modalities``.
    Returns:
        ``reduce_modalities(kl [B, M], mask, reduction)``.
    Raises:
        ValueError: shapes or level counts that do not match, or a bad option (see ``kl_map``).
    """
    if tuple(mask.shape) != tuple(student.shape[:2]):
        raise ValueError(f"mask must be [B, M] = {tuple(student.shape[:2])}, got {tuple(mask.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if deep_resample not in ("native", "upsample"):
        raise ValueError(f"deep_resample must be 'native' or 'upsample', got {deep_resample!r}")
    # (student, teacher, weight, upsampled): the output, the region map at full resolution, the coarser levels
    pairs: list[tuple[torch.Tensor, torch.Tensor, float, bool]] = [(student, teacher, 1.0, False)]
    if region0_weight and student_region0 is not None and teacher_region0 is not None:
        pairs.append((student_region0, teacher_region0, float(region0_weight), False))
    if student_deep is not None and teacher_deep is not None:
        if len(student_deep) != len(teacher_deep):
            raise ValueError(f"{len(student_deep)} student deep levels for {len(teacher_deep)} teacher levels")
        weights = [1.0] * len(student_deep) if deep_weights is None else [float(w) for w in deep_weights]
        if len(weights) < len(student_deep):
            raise ValueError(f"{len(weights)} pixel_kl deep weights for {len(student_deep)} decoder levels")
        pairs += [(s, t, w, deep_resample == "upsample")
                  for s, t, w in zip(student_deep, teacher_deep, weights, strict=False)]
    total = mask.new_zeros(mask.shape, dtype=torch.float32)
    size = tuple(teacher.shape[2:])
    for level, (s, t, weight, upsampled) in enumerate(pairs):
        _check_pair(s, t, f"pixel_kl level {level}")
        if weight == 0:
            continue
        t = t.detach() if detach_teacher else t
        if prob_floor is None and not upsampled:
            kl = kl_map(s, t.unsqueeze(1), temperature=temperature, direction=direction,
                        class_reduction=class_reduction, class_dim=2)
        else:
            p_s, p_t = (upcast(s) / temperature).softmax(2), (upcast(t) / temperature).softmax(1)
            if upsampled:
                p_s = _upsample(p_s.flatten(0, 1), size, align_corners).unflatten(0, p_s.shape[:2])
                p_t = _upsample(p_t, size, align_corners)
            kl = kl_probs(p_s, p_t.unsqueeze(1), floor=1e-12 if prob_floor is None else prob_floor,
                          direction=direction, class_reduction=class_reduction, class_dim=2,
                          clamped_weight=clamped_weight and prob_floor is not None)
        value = kl.flatten(2).mean(-1)
        total = total + (value if weight == 1.0 else value * weight)
    if scale_by_temperature and temperature != 1.0:
        total = total * temperature**2
    return reduce_modalities(total, mask, reduction)
