"""Prototype self-distillation (proto_l2): per-sample class prototypes and cosine-similarity maps."""

from __future__ import annotations

from typing import Literal

import torch

from .deep_supervision import ModalityReduction, reduce_modalities
from .segmentation import upcast
from .targets import onehot_labels

ClassPresence = Literal["sample", "batch"]

#: Presets: the seeds' definition (default) and PASSION's implementation. PASSION's ``prototype_passion_loss``
#: uses the classes present in every sample of what it is given, but its training loop gives it one sample at a
#: time (Jun-Jie-Shi/PASSION, code/train.py), so a class counts where its own sample has it; ``class_presence=
#: "batch"`` is the function's rule applied to a whole batch.
PROTO_VARIANTS: dict[str, dict[str, str]] = {
    "seeds": {"class_reduction": "sum", "class_presence": "sample"},
    "passion": {"class_reduction": "mean", "class_presence": "sample"},
}


def class_prototypes(features: torch.Tensor, onehot: torch.Tensor) -> torch.Tensor:
    """Masked mean of features over the voxels of each class. A class with no voxel gets a zero prototype.

    Args:
        features: ``[B, P, C, S]`` (P paths, C channels, S voxels).
        onehot: ``[B, K, S]`` float one-hot labels.
    Returns:
        Prototypes ``[B, P, K, C]``.
    """
    counts = onehot.sum(-1).clamp_min(1.0)  # [B, K]
    return torch.einsum("bpcs,bks->bpkc", features, onehot) / counts[:, None, :, None]


def safe_normalize(x: torch.Tensor, dim: int, eps: float = 1e-8) -> torch.Tensor:
    """``x / max(||x||_2, eps)`` along ``dim`` (the value of ``F.normalize``), twice differentiable everywhere.

    ``F.normalize`` differentiates ``||x||`` even where the clamp takes ``eps``; at a zero vector (the prototype
    of a class absent from the sample) its second derivative is NaN, and masking the result afterwards keeps the
    NaN (``0 * NaN``). Here the squared norm is replaced by ``eps^2`` *before* the square root wherever it is
    below, so no branch ever evaluates a derivative at zero and the gradient of a zero vector is ``x / eps``'s.

    Args:
        x: any tensor; dim: the dimension to normalise; eps: the smallest norm divided by.
    Returns:
        A tensor shaped like ``x``.
    """
    sq = x.square().sum(dim, keepdim=True)
    floor = eps * eps
    return x / torch.where(sq > floor, sq, torch.full_like(sq, floor)).sqrt()


def similarity_maps(features: torch.Tensor, prototypes: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Cosine similarity of every voxel to every prototype of its own path.

    Zero vectors give similarity 0, with finite first and second derivatives (``safe_normalize``), so
    second-order MAML through a class absent from a sample stays finite.

    Args:
        features: ``[B, P, C, S]`` (P paths, C channels, S voxels).
        prototypes: ``[B, P, K, C]`` (``class_prototypes``).
        eps: the smallest norm divided by (``x / max(||x||, eps)``).
    Returns:
        ``[B, P, K, S]`` cosine similarities.
    """
    f = safe_normalize(features, 2, eps)
    p = safe_normalize(prototypes, 3, eps)
    return torch.einsum("bpcs,bpkc->bpks", f, p)


def proto_gap(student_features: torch.Tensor, teacher_features: torch.Tensor, label: torch.Tensor, *,
              num_classes: int, class_reduction: Literal["sum", "mean"] = "sum",
              class_presence: ClassPresence = "sample", detach_teacher: bool = True, eps: float = 1e-8,
              onehot: torch.Tensor | None = None, with_absolute: bool = False
              ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Prototype gap D ``[B, M]``: squared difference of student and teacher similarity maps.

    Prototypes are computed per sample and path from the level-0 features and the label; each path's voxels are
    compared with its own prototypes. D = mean over voxels, then sum (``"sum"``, the seeds) or mean (``"mean"``,
    PASSION) over the classes used. ``class_presence="sample"``: classes present in the sample (also PASSION's
    training loop, which calls its loss one sample at a time); ``"batch"``: classes present in every sample of the
    batch (PASSION's loss function given a whole batch). Computed in float32 (float64 for float64 features).

    Args:
        student_features: ``[B, M, C, D, H, W]`` per-modality features (``uni_features``).
        teacher_features: ``[B, C, D, H, W]`` fused features; detached unless ``detach_teacher=False``.
        label: ``[B, D, H, W]`` class indices in ``[0, num_classes)``.
        num_classes: K.
        class_reduction, class_presence: see above; eps: the smallest norm divided by in the cosine similarity.
        onehot: ``[B, K, D, H, W]`` one-hot ``label`` when already computed (the batch's ``Targets``).
        with_absolute: also return the absolute gap (mean ``|S_s - S_t|`` over voxels, reduced over classes the
            same way), the distance PASSION's preference gate reads.
    Returns:
        ``[B, M]`` float32 (a gap of 0 where no class is used), or ``(gap, absolute gap)`` with
        ``with_absolute``.
    Raises:
        ValueError: shapes that do not match, or float labels.
    """
    b = label.shape[0]
    if teacher_features.dim() != label.dim() + 1 or teacher_features.shape[0] != b or \
            teacher_features.shape[2:] != label.shape[1:]:
        raise ValueError(f"teacher features must be [B, C, ...spatial] for label {tuple(label.shape)}, "
                         f"got {tuple(teacher_features.shape)}")
    if student_features.dim() != teacher_features.dim() + 1 or student_features.shape[0] != b or \
            student_features.shape[2:] != teacher_features.shape[1:]:
        raise ValueError(f"student features must be [B, M, C, ...spatial] matching teacher "
                         f"{tuple(teacher_features.shape)}, got {tuple(student_features.shape)}")
    if label.dtype.is_floating_point:
        raise ValueError(f"label must hold integer class indices, got {label.dtype}")
    teacher = teacher_features.detach() if detach_teacher else teacher_features
    paths = upcast(torch.cat([teacher.unsqueeze(1), student_features], dim=1)).flatten(3)  # [B, 1+M, C, S]
    onehot = (onehot_labels(label, num_classes) if onehot is None else onehot).to(paths.dtype).flatten(2)  # [B, K, S]
    sims = similarity_maps(paths, class_prototypes(paths, onehot), eps)  # [B, 1+M, K, S]
    diff = sims[:, 1:] - sims[:, :1]  # [B, M, K, S]
    present = onehot.amax(-1)  # [B, K]
    if class_presence == "batch":
        present = present.amin(0, keepdim=True).expand_as(present)
    elif class_presence != "sample":
        raise ValueError(f"class_presence must be 'sample' or 'batch', got {class_presence!r}")
    if class_reduction not in ("sum", "mean"):
        raise ValueError(f"class_reduction must be 'sum' or 'mean', got {class_reduction!r}")

    def over_classes(per_class: torch.Tensor) -> torch.Tensor:  # [B, M, K] -> [B, M]
        value = (per_class * present[:, None]).sum(-1)
        return value / present.sum(-1, keepdim=True).clamp_min(1.0) if class_reduction == "mean" else value

    gap = over_classes(diff.square().mean(-1))
    return (gap, over_classes(diff.abs().mean(-1))) if with_absolute else gap


def proto_l2_loss(student_features: torch.Tensor, teacher_features: torch.Tensor, label: torch.Tensor,
                  mask: torch.Tensor, *, num_classes: int, class_reduction: Literal["sum", "mean"] = "sum",
                  class_presence: ClassPresence = "sample", gate: torch.Tensor | None = None,
                  reduction: ModalityReduction = "total") -> torch.Tensor:
    """L_proto^m: the prototype gap (``proto_gap``) of every available modality, optionally gated.

    Args:
        student_features: per-modality level-0 decoder features ``[B, M, C, D, H, W]`` (``uni_features``).
        teacher_features: fused level-0 decoder features ``[B, C, D, H, W]`` (``features``), detached.
        label: ``[B, D, H, W]`` class indices in ``[0, num_classes)``.
        mask: ``[B, M]`` bool; missing modalities contribute 0 and receive no gradient.
        num_classes: K.
        class_reduction, class_presence: the seeds' ``"sum"``/``"sample"``, PASSION's ``"mean"``/``"sample"``
            (see ``proto_gap``).
        gate: ``[B, M]`` float multiplying the gap (the preference gate omega).
        reduction: see ``reduce_modalities``.
    Returns:
        ``reduce_modalities(gap [B, M], mask, reduction)``.
    Raises:
        ValueError: shapes that do not match, float labels, an unknown option.
    """
    if tuple(mask.shape) != tuple(student_features.shape[:2]):
        raise ValueError(f"mask must be [B, M] = {tuple(student_features.shape[:2])}, got {tuple(mask.shape)}")
    gap = proto_gap(student_features, teacher_features, label, num_classes=num_classes,
                    class_reduction=class_reduction, class_presence=class_presence)
    if gate is not None:
        if gate.shape != gap.shape:
            raise ValueError(f"gate must be [B, M] = {tuple(gap.shape)}, got {tuple(gate.shape)}")
        gap = gap * gate.to(gap.dtype)
    return reduce_modalities(gap, mask, reduction)
