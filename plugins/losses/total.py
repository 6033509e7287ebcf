"""The seeds' total objective as one registered term ``prism``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch

from prism.batch import Batch
from prism.loss import LossResult
from prism.outputs import SegOutput

from .deep_supervision import LabelResample
from .errors import check_keys
from .terms import (
    FuseLoss,
    GssLoss,
    PixelKLLoss,
    PreferenceTerm,
    PrmLoss,
    ProtoL2Loss,
    UniLoss,
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
                 preference_options: dict[str, Any] | None = None,
                 **seg: Any) -> None:
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
        self.gss = GssLoss(modalities, num_classes, weight=gss_weight, **(gss_options or {})) if gss else None
        self.setup_preference(preference, missing_rates, preference_options or {})

    def _weights_on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """beta and delta as tensors on ``device``, built once per device (no copy per step)."""
        cached = getattr(self, "_weights", None)
        if cached is None or cached[0].device != device:
            cached = (torch.tensor(self.beta, device=device), torch.tensor(self.delta, device=device))
            self._weights = cached
        return cached

    def __call__(self, output: SegOutput, batch: Batch) -> LossResult:
        fuse = self.fuse(output, batch).total
        uni = self.uni.per_modality(output, batch)
        prm = self.prm(output, batch).total
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
        if self.gss is not None:
            gss = self.gss.per_modality(output, batch)
            total = total + self.gss.weight * gss.sum()
            parts.update(modality_parts("gss", gss, self.modalities))
        return LossResult(total, parts)
