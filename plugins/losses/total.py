"""The seeds' total objective as one registered term ``prism``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch

from prism.batch import Batch
from prism.loss import LossResult
from prism.outputs import SegOutput

from .deep_supervision import LabelResample, level_losses, reduce_modalities
from .errors import check_keys
from .targets import targets_for
from .terms import (
    FuseLoss,
    GssLoss,
    PixelKLLoss,
    PreferenceTerm,
    PrmLoss,
    ProtoL2Loss,
    UniLoss,
    _require,
    modality_parts,
    per_modality_values,
    seg_options,
)


class PrismLoss(PreferenceTerm):
    """L = fuse + sum_m E^m (beta_m pixel_kl^m + delta_m omega proto_l2^m) + uni + PRM (+ gss_weight * gss).

    beta (0.5) and delta (0.1) are scalars or one value per modality. E^m = 1 and omega = 1 unless
    ``preference=True`` (PASSION's preference-aware regularisation; its options ``gamma``, ``gamma_growth``,
    ``growth_every``, ``clamp``, ``projection``, ``target_norm`` pass through). Parts: every term and every
    term per modality (``pixel_kl/flair`` ...), unweighted.

    ``separate=True`` adds RFNet's separate-decoder loss (output part ``sep``, weight ``separate_weight``) inside
    this term, scored in the same batched call as the fused and per-modality logits (use it instead of the
    ``rfnet_sep`` term).
    """

    needs = frozenset({"logits", "deep", "uni", "uni_deep", "features", "uni_features"})

    def __init__(self, modalities: tuple[str, ...], num_classes: int, *, beta: float | Sequence[float] = 0.5,
                 delta: float | Sequence[float] = 0.1, temperature: float = 4.0,
                 pixel_kl_variant: Literal["seeds", "passion"] = "seeds",
                 proto_variant: Literal["seeds", "passion"] = "seeds", pixel_kl_deep: bool = True,
                 uni_deep: bool = True, deep_weights: Sequence[float] | None = None,
                 label_resample: LabelResample = "maxpool", gss: bool = False, gss_weight: float = 0.5,
                 gss_options: dict[str, Any] | None = None, preference: bool = False,
                 missing_rates: Sequence[float] | Mapping[str, float] | None = None,
                 preference_options: dict[str, Any] | None = None, separate: bool = False,
                 separate_weight: float = 1.0, **seg: Any) -> None:
        super().__init__(modalities, num_classes)
        check_keys(seg, seg_options, "loss 'prism'")
        check_keys(gss_options or {}, GssLoss, "loss 'prism' gss_options")
        self.beta = per_modality_values(beta, self.modalities, "beta")
        self.delta = per_modality_values(delta, self.modalities, "delta")
        self.fuse = FuseLoss(modalities, num_classes, **seg)
        self.uni = UniLoss(modalities, num_classes, deep=uni_deep, deep_weights=deep_weights,
                           label_resample=label_resample, **seg)
        self.prm = PrmLoss(modalities, num_classes, weights=deep_weights, label_resample=label_resample, **seg)
        self.pixel_kl = PixelKLLoss(modalities, num_classes, temperature=temperature, variant=pixel_kl_variant,
                                    deep=pixel_kl_deep)
        self.proto = ProtoL2Loss(modalities, num_classes, variant=proto_variant)
        self.separate, self.separate_weight = bool(separate), float(separate_weight)
        if self.separate:
            self.needs = type(self).needs | {"sep"}
        self.seg = self.fuse.seg
        self.gss = GssLoss(modalities, num_classes, weight=gss_weight, **(gss_options or {})) if gss else None
        self.setup_preference(preference, missing_rates, preference_options or {})

    def _weights_on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """beta and delta as tensors on ``device``, built once per device (no copy per step)."""
        cached = getattr(self, "_weights", None)
        if cached is None or cached[0].device != device:
            cached = (torch.tensor(self.beta, device=device), torch.tensor(self.delta, device=device))
            self._weights = cached
        return cached

    def segmentation(self, output: SegOutput, batch: Batch
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Dice + CE of every prediction, one batched call per decoder level (labels one-hot once per level).

        Level 0 scores the fused, the per-modality and (``separate=True``) the separate-decoder logits together;
        each coarser level s scores the fused region map and the per-modality maps together, weighted ``2^-s``.

        Returns:
            ``(fuse, uni, prm, sep)``: scalar batch means for fuse and PRM; ``[M]`` per-modality batch means for
            uni and sep (missing modalities count 0), sep None unless ``separate``.
        """
        _require(output, ["logits", "deep", "uni"] + (["sep"] if self.separate else []), "prism")
        m = len(self.modalities)
        targets = targets_for(batch.label, output.logits.shape[1], batch)
        level0 = [output.logits.unsqueeze(1), output.uni] + ([output.part("sep")] if self.separate else [])
        per = self.seg.per_path(torch.cat(level0, 1), targets.onehot())  # [B, 1 + M (+ M)]
        with_uni_deep = self.uni.deep and output.uni_deep is not None
        levels = [torch.cat([d.unsqueeze(1), u], 1) for d, u in zip(output.deep, output.uni_deep, strict=True)] \
            if with_uni_deep else [d.unsqueeze(1) for d in output.deep]
        deep = level_losses(levels, targets, weights=self.uni.deep_weights, label_resample=self.uni.label_resample,
                            options=self.seg)  # [B, 1 (+ M)]
        uni = per[:, 1:1 + m] + deep[:, 1:] if with_uni_deep else per[:, 1:1 + m]
        sep = reduce_modalities(per[:, 1 + m:], batch.mask, "per_modality") if self.separate else None
        return per[:, 0].mean(), reduce_modalities(uni, batch.mask, "per_modality"), deep[:, 0].mean(), sep

    def __call__(self, output: SegOutput, batch: Batch) -> LossResult:
        fuse, uni, prm, sep = self.segmentation(output, batch)
        pixel = self.pixel_kl.per_modality(output, batch)
        gap = self.proto.gaps(output, batch)
        omega = self.gate(gap, batch.mask)
        proto = (gap if omega is None else gap * omega).mean(0)
        beta, delta = self._weights_on(pixel.device)
        distill = beta * pixel + delta * proto
        parts = {"fuse": fuse.detach(), **modality_parts("uni", uni, self.modalities), "prm": prm.detach(),
                 **modality_parts("pixel_kl", pixel, self.modalities),
                 **modality_parts("proto_l2", proto, self.modalities)}
        if self.preference is not None:
            coef = self.preference.coefficients_on(pixel.device)
            distill = distill * coef
            parts.update(modality_parts("pref_coef", coef, self.modalities, total=False))
        total = fuse + uni.sum() + prm + distill.sum()
        if sep is not None:
            total = total + self.separate_weight * sep.sum()
            parts.update(modality_parts("rfnet_sep", sep, self.modalities))
        if self.gss is not None:
            gss = self.gss.per_modality(output, batch)
            total = total + self.gss.weight * gss.sum()
            parts.update(modality_parts("gss", gss, self.modalities))
        return LossResult(total, parts)
