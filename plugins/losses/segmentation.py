"""Segmentation loss: weighted cross-entropy + soft Dice on logits, as a plain function on tensors."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from .errors import LossOptionError

Reduction = Literal["mean", "sum", "none"]


def upcast(x: torch.Tensor) -> torch.Tensor:
    """``x`` in the precision the losses compute in: float64 stays float64 (a float64 caller, e.g. a check against
    a reference, gets float64 throughout); every other dtype (bf16 and fp16 under autocast) becomes float32."""
    return x if x.dtype == torch.float64 else x.float()


def _check(logits: torch.Tensor, target: torch.Tensor) -> None:
    if logits.dim() < 3:
        raise ValueError(f"logits must be [B, K, ...spatial], got {tuple(logits.shape)}")
    if target.shape != (logits.shape[0], *logits.shape[2:]):
        raise ValueError(f"target must be [B, ...spatial] = {(logits.shape[0], *logits.shape[2:])}, "
                         f"got {tuple(target.shape)}")
    if target.dtype.is_floating_point:
        raise ValueError(f"target must hold integer class indices, got {target.dtype}")


def _reduce(x: torch.Tensor, reduction: Reduction) -> torch.Tensor:
    if reduction == "mean":
        return x.mean()
    if reduction == "sum":
        return x.sum()
    if reduction == "none":
        return x
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, *, include_background: bool = True,
                   smooth_nr: float = 1e-5, smooth_dr: float = 1e-5, batch: bool = False,
                   reduction: Reduction = "mean") -> torch.Tensor:
    """Soft Dice loss ``1 - (2|P.G| + smooth_nr) / (|P| + |G| + smooth_dr)`` on softmax probabilities.

    Per sample and class, averaged over classes (``batch=True`` sums over the batch first, as MONAI's DiceLoss).
    Computed in float32 (float64 for float64 logits).

    Args:
        logits: ``[B, K, *spatial]``.
        target: ``[B, *spatial]`` integer class indices.
        include_background: count class 0.
        smooth_nr, smooth_dr: added to the numerator and the denominator.
        batch: sum over the batch before the ratio.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
    Returns:
        ``[B]`` (a scalar with ``batch=True``) before ``reduction``.
    Raises:
        ValueError: shapes that do not match, float targets or an unknown reduction.
    """
    _check(logits, target)
    k = logits.shape[1]
    probs = upcast(logits).softmax(1)
    onehot = F.one_hot(target.long(), k).movedim(-1, 1).to(probs.dtype)
    if not include_background:
        probs, onehot = probs[:, 1:], onehot[:, 1:]
    dims = tuple(range(2, probs.dim()))
    inter = (probs * onehot).sum(dims)
    denom = probs.sum(dims) + onehot.sum(dims)
    if batch:
        inter, denom = inter.sum(0), denom.sum(0)
    dice = 1.0 - (2.0 * inter + smooth_nr) / (denom + smooth_dr)
    return _reduce(dice.mean(-1), reduction)


def cross_entropy_loss(logits: torch.Tensor, target: torch.Tensor, *, weight: torch.Tensor | None = None,
                       class_weighting: Literal["none", "passion"] = "none", prob_floor: float = 0.005,
                       reduction: Reduction = "mean") -> torch.Tensor:
    """Cross-entropy per sample (mean over voxels), in float32 (float64 for float64 logits).

    Args:
        logits: ``[B, K, *spatial]``.
        target: ``[B, *spatial]`` integer class indices.
        weight: fixed class weights ``[K]`` (a weighted mean, normalised as torch does).
        class_weighting: ``"passion"``: PASSION's per-sample weights ``w_c = 1 - |y_c| / |y|`` with probabilities
            clamped at ``prob_floor`` (plain mean over voxels, not normalised by the weights).
        prob_floor: the clamp of the ``"passion"`` weighting.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
    Returns:
        ``[B]`` before ``reduction``.
    Raises:
        ValueError: shapes that do not match, float targets, an unknown weighting or reduction.
    """
    _check(logits, target)
    logits = upcast(logits)
    target = target.long()
    if class_weighting == "passion":
        k = logits.shape[1]
        onehot = F.one_hot(target, k).movedim(-1, 1).to(logits.dtype)
        dims = tuple(range(2, onehot.dim()))
        w = 1.0 - onehot.sum(dims) / onehot[0, 0].numel()  # [B, K]
        logp = logits.softmax(1).clamp_min(prob_floor).log()
        per_voxel = -(onehot * logp * w.view(*w.shape, *([1] * len(dims)))).sum(1)
        return _reduce(per_voxel.flatten(1).mean(1), reduction)
    if class_weighting != "none":
        raise ValueError(f"class_weighting must be 'none' or 'passion', got {class_weighting!r}")
    per_voxel = F.cross_entropy(logits, target, weight=None if weight is None else weight.to(logits.dtype),
                                reduction="none")
    if weight is None:
        return _reduce(per_voxel.flatten(1).mean(1), reduction)
    w = weight.to(logits.dtype)[target]  # weighted mean per sample, as torch's reduction="mean"
    return _reduce(per_voxel.flatten(1).sum(1) / w.flatten(1).sum(1).clamp_min(1e-12), reduction)


def dice_ce_loss(logits: torch.Tensor, target: torch.Tensor, *, include_background: bool = True,
                 ce_weight: torch.Tensor | None = None, class_weighting: Literal["none", "passion"] = "none",
                 lambda_dice: float = 1.0, lambda_ce: float = 1.0, smooth_nr: float = 1e-5,
                 smooth_dr: float = 1e-5, prob_floor: float = 0.005, reduction: Reduction = "mean") -> torch.Tensor:
    """``lambda_dice * soft Dice + lambda_ce * cross-entropy`` on logits ``[B, K, ...]`` and labels ``[B, ...]``.

    With ``include_background=True``, no class weights and ``lambda_*=1`` it equals MONAI's
    ``DiceCELoss(softmax=True, to_onehot_y=True)`` up to its batch handling (per-sample Dice, averaged).
    ``prob_floor`` only applies with ``class_weighting="passion"``.

    Args:
        logits: ``[B, K, *spatial]``; target: ``[B, *spatial]`` integer class indices.
        ce_weight: fixed cross-entropy class weights ``[K]``; the other options: see ``soft_dice_loss`` and
            ``cross_entropy_loss``.
    Returns:
        ``[B]`` before ``reduction``.
    Raises:
        ValueError: see ``soft_dice_loss`` and ``cross_entropy_loss``.
    """
    dice = soft_dice_loss(logits, target, include_background=include_background, smooth_nr=smooth_nr,
                          smooth_dr=smooth_dr, reduction="none")
    ce = cross_entropy_loss(logits, target, weight=ce_weight, class_weighting=class_weighting,
                            prob_floor=prob_floor, reduction="none")
    return _reduce(lambda_dice * dice + lambda_ce * ce, reduction)


@dataclass(frozen=True)
class SegLossOptions:
    """The options of the segmentation loss shared by the fuse, uni and PRM terms.

    ``class_weights``: fixed cross-entropy class weights (length K) or None; ``batch_reduction``: the terms
    average the per-sample losses over the batch (``"mean"``, the seeds) or add them (``"sum"``, PASSION's code;
    equal at batch size 1); the other fields are those of :func:`dice_ce_loss`.
    """

    include_background: bool = True
    class_weights: tuple[float, ...] | None = None
    class_weighting: Literal["none", "passion"] = "none"
    lambda_dice: float = 1.0
    lambda_ce: float = 1.0
    smooth_nr: float = 1e-5
    smooth_dr: float = 1e-5
    prob_floor: float = 0.005
    batch_reduction: Literal["mean", "sum"] = "mean"

    def __post_init__(self) -> None:
        if self.batch_reduction not in ("mean", "sum"):
            raise LossOptionError(f"batch_reduction must be 'mean' or 'sum', got {self.batch_reduction!r}")
        if self.class_weighting not in ("none", "passion"):
            raise LossOptionError(f"class_weighting must be 'none' or 'passion', got {self.class_weighting!r}")
        if self.class_weights is not None:
            object.__setattr__(self, "class_weights", tuple(float(w) for w in self.class_weights))

    def reduce_batch(self, values: torch.Tensor) -> torch.Tensor:
        """Mean or sum (``batch_reduction``) over dimension 0: ``[B, ...]`` -> ``[...]``."""
        return values.sum(0) if self.batch_reduction == "sum" else values.mean(0)

    def per_path(self, logits: torch.Tensor, onehot: torch.Tensor) -> torch.Tensor:
        """Dice + CE of several predictions of the same labels in one batched call (what the terms use).

        Args:
            logits: ``[B, P, K, *spatial]``: P predictions per sample (fused, per-modality, separate decoder ...).
            onehot: ``[B, K, *spatial]`` one-hot labels (``Targets.onehot``), shared by the P predictions.
        Returns:
            ``[B, P]`` float32, equal to ``per_sample`` of each prediction.
        """
        logp = upcast(logits).log_softmax(2)
        return self.per_path_probs(logp.exp(), onehot, logp)

    def per_path_probs(self, probs: torch.Tensor, onehot: torch.Tensor, logp: torch.Tensor | None = None
                       ) -> torch.Tensor:
        """``per_path`` from probabilities ``[B, P, K, *spatial]`` (e.g. upsampled from a coarser level).

        ``logp``: their logarithm when known exactly (from ``log_softmax``); otherwise ``log(max(p, 1e-12))``.
        With ``class_weighting="passion"`` the log is taken of ``max(p, prob_floor)`` either way.
        """
        if probs.dim() < 4 or onehot.shape != (probs.shape[0], *probs.shape[2:]):
            raise ValueError(f"predictions must be [B, P, K, ...] for one-hot labels [B, K, ...], got "
                             f"{tuple(probs.shape)} and {tuple(onehot.shape)}")
        k = probs.shape[2]
        oh = onehot.unsqueeze(1).to(probs.dtype)  # [B, 1, K, ...]
        dims = tuple(range(3, probs.dim()))
        voxels = math.prod(probs.shape[3:])
        # Dice, written to launch few kernels: 1 - mean_k (2 |P.G| + s_nr) / (|P| + |G| + s_dr)
        pd, od = (probs, oh) if self.include_background else (probs[:, :, 1:], oh[:, :, 1:])
        ratio = ((pd * od).sum(dims) * 2.0 + self.smooth_nr) / (pd.sum(dims) + (od.sum(dims) + self.smooth_dr))
        overlap = ratio.mean(-1)  # [B, P]; dice = 1 - overlap
        if self.class_weighting == "passion":
            w = 1.0 - oh.sum(dims) * (1.0 / voxels)  # [B, 1, K]
            logq = probs.clamp_min(self.prob_floor).log()
            ce = (oh * logq * w.view(*w.shape, *([1] * len(dims)))).sum((2, *dims)) * (-1.0 / voxels)
        else:
            if logp is None:
                logp = probs.clamp_min(1e-12).log()
            if self.class_weights is None:
                ce = (oh * logp).sum((2, *dims)) * (-1.0 / voxels)
            else:
                if len(self.class_weights) != k:
                    raise ValueError(f"class_weights has {len(self.class_weights)} entries for {k} classes")
                weight = torch.tensor(self.class_weights, dtype=probs.dtype, device=probs.device)
                wy = (oh * weight.view(1, 1, k, *([1] * len(dims)))).sum(2)  # [B, 1, ...]
                nll = -(oh * logp).sum(2)  # [B, P, ...]
                ce = (nll * wy).flatten(2).sum(-1) / wy.flatten(2).sum(-1).clamp_min(1e-12)
        if self.lambda_dice == 1.0 and self.lambda_ce == 1.0:
            return ce - overlap + 1.0
        return (1.0 - overlap) * self.lambda_dice + ce * self.lambda_ce

    def per_sample(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Dice + CE per sample: logits ``[B, K, ...]``, target ``[B, ...]`` -> ``[B]`` (float32)."""
        weight = None
        if self.class_weights is not None:
            if len(self.class_weights) != logits.shape[1]:
                raise ValueError(f"class_weights has {len(self.class_weights)} entries for {logits.shape[1]} classes")
            weight = torch.tensor(self.class_weights, dtype=torch.float32, device=logits.device)
        return dice_ce_loss(logits, target, include_background=self.include_background, ce_weight=weight,
                            class_weighting=self.class_weighting, lambda_dice=self.lambda_dice,
                            lambda_ce=self.lambda_ce, smooth_nr=self.smooth_nr, smooth_dr=self.smooth_dr,
                            prob_floor=self.prob_floor, reduction="none")


#: the segmentation loss's defaults, written once: every term's signature takes its defaults from here
SEG = SegLossOptions()
