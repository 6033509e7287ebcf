"""The seeds' total objective as one registered term ``prism``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch

from prism.batch import Batch
from prism.loss import LossResult
from prism.outputs import SegOutput

from .deep_supervision import LabelResample, level_losses, reduce_modalities
from .errors import LossOptionError, check_keys
from .preference import initial_coefficients
from .targets import targets_for
from .terms import (
    FuseLoss,
    GateMode,
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
    ``growth_every``, ``clamp``, ``projection``, ``target_norm``, ``initial``, ``schedule``, ``statistic`` pass
    through ``preference_options``). Parts: every term and every term per modality (``pixel_kl/flair`` ...),
    unweighted.

    ``separate=True`` adds RFNet's separate-decoder loss (output part ``sep``, weight ``separate_weight``) inside
    this term, scored in the same batched call as the fused and per-modality logits (use it instead of the
    ``rfnet_sep`` term).

    PASSION's code, each an option (defaults: the seeds' objective): ``weighting="passion"`` weights the terms as
    ``fuse + prm + sum_m [omega_m E_m w_m sep_m + beta E_m w_m kl_m + delta omega_m w_m proto_m]``: the gate also
    gates the separate-decoder loss, the preference coefficients E multiply KL and sep but not proto, and
    ``w_m = 1 / (1 - FR^m)`` (``modal_weight=True``, from ``missing_rates``) is a separate fixed factor;
    ``uni_weight=0`` drops L_uni (PASSION has no loss on the fused decoder's single-modality paths);
    ``gate="batch"``: one gate per modality from the batch's absolute prototype distances; ``proto_eps``: the
    cosine similarity's eps (PASSION 1e-5); ``prm_region0``: the weight of the full-resolution region map in
    PRM (RFNet's extra part ``region0``; PASSION 1/2); ``pixel_kl_options``: ``prob_floor``, ``deep_resample``,
    ``deep_weighting`` of ``pixel_kl``; ``label_resample="upsample"`` and ``deep_weights``: PRM on upsampled
    probabilities with PASSION's level weights; segmentation options (``class_weighting``, ``smooth_nr``,
    ``smooth_dr``, ``prob_floor``, ``batch_reduction``) pass through to every segmentation term.
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
                 separate_weight: float = 1.0, uni_weight: float = 1.0,
                 weighting: Literal["seeds", "passion"] = "seeds", modal_weight: bool = False,
                 gate: GateMode = "sample", proto_eps: float = 1e-8,
                 pixel_kl_options: dict[str, Any] | None = None, prm_region0: float = 0.0, **seg: Any) -> None:
        super().__init__(modalities, num_classes)
        check_keys(seg, seg_options, "loss 'prism'")
        check_keys(gss_options or {}, GssLoss, "loss 'prism' gss_options")
        kl_options = dict(pixel_kl_options or {})
        check_keys(kl_options, kl_option_names, "loss 'prism' pixel_kl_options")
        self.beta = per_modality_values(beta, self.modalities, "beta")
        self.delta = per_modality_values(delta, self.modalities, "delta")
        self.fuse = FuseLoss(modalities, num_classes, **seg)
        self.uni = UniLoss(modalities, num_classes, deep=uni_deep, deep_weights=deep_weights,
                           label_resample=label_resample, **seg)
        self.prm = PrmLoss(modalities, num_classes, weights=deep_weights, label_resample=label_resample, **seg)
        self.pixel_kl = PixelKLLoss(modalities, num_classes, temperature=temperature, variant=pixel_kl_variant,
                                    deep=pixel_kl_deep, **kl_options)
        self.proto = ProtoL2Loss(modalities, num_classes, variant=proto_variant, eps=proto_eps)
        self.separate, self.separate_weight = bool(separate), float(separate_weight)
        self.uni_weight = float(uni_weight)
        if weighting not in ("seeds", "passion"):
            raise LossOptionError(f"weighting must be 'seeds' or 'passion', got {weighting!r}")
        self.weighting = weighting
        self.prm_region0 = float(prm_region0)
        self.needs = type(self).needs | ({"sep"} if self.separate else set()) | \
            ({"region0"} if self.prm_region0 else set())
        self.seg = self.fuse.seg
        self.gss = GssLoss(modalities, num_classes, weight=gss_weight, **(gss_options or {})) if gss else None
        self.setup_preference(preference, missing_rates, preference_options or {}, gate)
        if modal_weight and self.missing_rates is None:
            raise LossOptionError("modal_weight=true needs missing_rates")
        self.modal_weight = initial_coefficients(self.missing_rates).tolist() if modal_weight else None

    def _weights_on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """beta, delta and the modal weights as tensors on ``device``, built once per device (no copy per step)."""
        cached = getattr(self, "_weights", None)
        if cached is None or cached[0].device != device:
            cached = (torch.tensor(self.beta, device=device), torch.tensor(self.delta, device=device),
                      None if self.modal_weight is None else torch.tensor(self.modal_weight, device=device))
            self._weights = cached
        return cached

    def segmentation(self, output: SegOutput, batch: Batch
                     ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor | None]:
        """Dice + CE of every prediction, one batched call per decoder level (labels one-hot once per level).

        Level 0 scores the fused, the per-modality (unless ``uni_weight=0``) and (``separate=True``) the
        separate-decoder logits together; each coarser level s scores the fused region map and the per-modality
        maps together, weighted ``2^-s`` (or ``deep_weights``).

        Returns:
            ``(fuse, uni, prm, sep)``: scalars (batch mean or sum) for fuse and PRM; ``[B, M]`` per-sample values
            for uni and sep (missing modalities zeroed); uni None when ``uni_weight=0``, sep None unless
            ``separate``.
        """
        with_uni = self.uni_weight != 0
        _require(output, ["logits", "deep"] + (["uni"] if with_uni else []) + (["sep"] if self.separate else []),
                 "prism")
        m = len(self.modalities) if with_uni else 0
        targets = targets_for(batch.label, output.logits.shape[1], batch)
        _require(output, ["region0"] if self.prm_region0 else [], "prism")
        level0 = [output.logits.unsqueeze(1)] + ([output.uni] if with_uni else []) + \
            ([output.part("sep")] if self.separate else []) + \
            ([output.part("region0").unsqueeze(1)] if self.prm_region0 else [])
        per = self.seg.per_path(torch.cat(level0, 1) if len(level0) > 1 else level0[0], targets.onehot())
        if self.prm_region0:  # the full-resolution region map is scored with level 0, counted in PRM
            per, region0 = per[:, :-1], per[:, -1]
        with_uni_deep = with_uni and self.uni.deep and output.uni_deep is not None
        levels = [torch.cat([d.unsqueeze(1), u], 1) for d, u in zip(output.deep, output.uni_deep, strict=True)] \
            if with_uni_deep else [d.unsqueeze(1) for d in output.deep]
        deep = level_losses(levels, targets, weights=self.uni.deep_weights, label_resample=self.uni.label_resample,
                            options=self.seg)  # [B, 1 (+ M)]
        uni = None
        if with_uni:
            uni = reduce_modalities(per[:, 1:1 + m] + deep[:, 1:] if with_uni_deep else per[:, 1:1 + m],
                                    batch.mask, "none")
        sep = reduce_modalities(per[:, 1 + m:], batch.mask, "none") if self.separate else None
        prm = deep[:, 0] + self.prm_region0 * region0 if self.prm_region0 else deep[:, 0]
        return self.seg.reduce_batch(per[:, 0]), uni, self.seg.reduce_batch(prm), sep

    def __call__(self, output: SegOutput, batch: Batch) -> LossResult:
        fuse, uni_bm, prm, sep_bm = self.segmentation(output, batch)
        pixel = self.pixel_kl.per_modality(output, batch)
        gaps = self.proto.gaps(output, batch, with_distances=self.needs_distances)
        gap, dist = gaps if self.needs_distances else (gaps, None)
        omega = self.gate(gap, batch.mask, dist)  # [B, M] or None
        proto = (gap if omega is None else gap * omega).mean(0)
        beta, delta, modal = self._weights_on(pixel.device)
        coef = None if self.preference is None else self.preference.coefficients_on(pixel.device)
        parts = {"fuse": fuse.detach(), "prm": prm.detach(), **modality_parts("pixel_kl", pixel, self.modalities),
                 **modality_parts("proto_l2", proto, self.modalities)}
        total = fuse + prm
        if uni_bm is not None:
            uni = self.seg.reduce_batch(uni_bm)
            parts.update(modality_parts("uni", uni, self.modalities))
            total = total + self.uni_weight * uni.sum()
        sep = None
        if sep_bm is not None:
            sep = self.seg.reduce_batch(sep_bm)
            parts.update(modality_parts("rfnet_sep", sep, self.modalities))
        if self.weighting == "seeds":
            distill = beta * pixel + delta * proto
            if coef is not None:
                distill = distill * coef
            total = total + distill.sum()
            if sep is not None:
                total = total + self.separate_weight * sep.sum()
        else:  # PASSION's code: gate on sep and proto, E on sep and KL, modal weight on all three
            w = torch.ones_like(pixel) if modal is None else modal
            e = torch.ones_like(pixel) if coef is None else coef
            total = total + (beta * e * w * pixel).sum() + (delta * w * proto).sum()
            if sep_bm is not None:
                gated = sep_bm if omega is None else sep_bm * omega
                total = total + self.separate_weight * (e * w * self.seg.reduce_batch(gated)).sum()
        if coef is not None:
            parts.update(modality_parts("pref_coef", coef, self.modalities, total=False))
        if self.gss is not None:
            gss = self.gss.per_modality(output, batch)
            total = total + self.gss.weight * gss.sum()
            parts.update(modality_parts("gss", gss, self.modalities))
        return LossResult(total, parts)


def kl_option_names(*, prob_floor: float | None = None, deep_resample: str = "native",
                    deep_weighting: str = "none") -> None:
    """The ``pixel_kl_options`` a ``prism`` term accepts (see ``PixelKLLoss``)."""
