"""The seeds' total objective as one registered term ``prism`` (PASSION's with the options its preset selects)."""

from __future__ import annotations

import torch

from prism.batch import Batch
from prism.loss import LossResult
from prism.outputs import SegOutput

from .deep_supervision import level_losses, reduce_modalities
from .errors import LossOptionError, check_keys
from .options import (
    AlignCorners,
    BatchReduction,
    ClassWeightingOption,
    ClassWeights,
    DeepWeights,
    GateOption,
    GssEnabled,
    GssGroup,
    GssOptions,
    GssWeight,
    IncludeBackground,
    KLDeep,
    KLVariant,
    LabelResampleOption,
    LambdaCE,
    LambdaDice,
    MissingRates,
    ModalWeight,
    PerModalityWeight,
    PixelKLGroup,
    PixelKLOptions,
    PreferenceEnabled,
    PreferenceGroup,
    ProtoEps,
    ProtoVariant,
    Region0Weight,
    SegProbFloor,
    Separate,
    SmoothDr,
    SmoothNr,
    Temperature,
    TermWeight,
    UniDeep,
    UniWeight,
    WeightingOption,
)
from .preference import initial_coefficients
from .segmentation import SEG
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
)


class PrismLoss(PreferenceTerm):
    """L = fuse + sum_m E^m (beta_m pixel_kl^m + delta_m omega proto_l2^m) + uni + PRM (+ gss_weight * gss).

    beta (0.5) and delta (0.1) are scalars or one value per modality. E^m = 1 and omega = 1 unless
    ``preference=True`` (PASSION's preference-aware regularisation; its options ``gamma``, ``gamma_growth``,
    ``growth_every``, ``clamp``, ``projection``, ``target_norm``, ``initial``, ``schedule``, ``statistic`` pass
    through ``preference_options``). Parts: every term and every term per modality (``pixel_kl/flair`` ...),
    unweighted; the weighted contributions (``fuse``, ``prm``, ``uni``, ``rfnet_sep``, ``pixel_kl``, ``proto_l2``,
    ``gss``) sum to the total, and the run logs each one's share of the loss (``share.<name>``).

    ``separate=True`` adds RFNet's separate-decoder loss (output part ``sep``, weight ``separate_weight``) inside
    this term, scored in the same batched call as the fused and per-modality logits (use it instead of the
    ``rfnet_sep`` term).

    PASSION's code, each an option (defaults: the seeds' objective): ``weighting="passion"`` weights the terms as
    ``fuse + prm + sum_m [omega_m E_m w_m sep_m + beta E_m w_m kl_m + delta omega_m w_m proto_m]``: the gate also
    gates the separate-decoder loss, the preference coefficients E multiply KL and sep but not proto, and
    ``w_m = 1 / (1 - FR^m)`` (``modal_weight=True``, from ``missing_rates``, which ``"from_split"`` counts from
    the training split) is a separate fixed factor; ``uni_weight=0`` drops L_uni (PASSION has no loss on the fused
    decoder's single-modality paths); ``gate="batch"``: one gate per modality from the batch's absolute prototype
    distances; ``proto_eps``: the cosine similarity's eps (PASSION 1e-5); ``prm_region0``: the weight of the
    full-resolution region map in PRM (RFNet's extra part ``region0``; PASSION 1/2); ``pixel_kl_options``:
    ``prob_floor``, ``clamped_weight``, ``deep_resample``, ``deep_weights``, ``region0_weight``,
    ``scale_by_temperature`` of ``pixel_kl``; ``label_resample="upsample"`` and ``deep_weights``: PRM on upsampled
    probabilities with PASSION's level weights; ``align_corners``: of every probability upsampling;
    segmentation options (``class_weighting``, ``smooth_nr``, ``smooth_dr``, ``prob_floor``, ``batch_reduction``)
    pass through to every segmentation term, and ``batch_reduction="sum"`` also sums pixel_kl and proto_l2 over the
    batch (PASSION's training loop).
    """

    needs = frozenset({"logits", "deep", "uni", "uni_deep", "features", "uni_features"})

    def __init__(self, modalities: tuple[str, ...], num_classes: int, *, beta: PerModalityWeight = 0.5,
                 delta: PerModalityWeight = 0.1, temperature: Temperature = 4.0,
                 pixel_kl_variant: KLVariant = "seeds", proto_variant: ProtoVariant = "seeds",
                 pixel_kl_deep: KLDeep = True, uni_deep: UniDeep = True, deep_weights: DeepWeights = None,
                 label_resample: LabelResampleOption = "maxpool", align_corners: AlignCorners = False,
                 gss: GssEnabled = False, gss_weight: GssWeight = 0.5, gss_options: GssGroup = None,
                 preference: PreferenceEnabled = False, missing_rates: MissingRates = None,
                 preference_options: PreferenceGroup = None, separate: Separate = False,
                 separate_weight: TermWeight = 1.0, uni_weight: UniWeight = 1.0,
                 weighting: WeightingOption = "seeds", modal_weight: ModalWeight = False,
                 gate: GateOption = "sample", proto_eps: ProtoEps = 1e-8,
                 pixel_kl_options: PixelKLGroup = None, prm_region0: Region0Weight = 0.0,
                 include_background: IncludeBackground = SEG.include_background,
                 class_weighting: ClassWeightingOption = SEG.class_weighting,
                 lambda_dice: LambdaDice = SEG.lambda_dice, lambda_ce: LambdaCE = SEG.lambda_ce,
                 class_weights: ClassWeights = None,
                 smooth_nr: SmoothNr = SEG.smooth_nr, smooth_dr: SmoothDr = SEG.smooth_dr,
                 prob_floor: SegProbFloor = SEG.prob_floor,
                 batch_reduction: BatchReduction = SEG.batch_reduction) -> None:
        super().__init__(modalities, num_classes)
        seg = dict(include_background=include_background, class_weighting=class_weighting, lambda_dice=lambda_dice,
                   lambda_ce=lambda_ce, class_weights=class_weights, smooth_nr=smooth_nr, smooth_dr=smooth_dr,
                   prob_floor=prob_floor, batch_reduction=batch_reduction)
        gss_options = dict(gss_options or {})
        check_keys(gss_options, GssOptions.__annotations__, "loss 'prism' gss_options")
        kl_options = dict(pixel_kl_options or {})
        check_keys(kl_options, PixelKLOptions.__annotations__, "loss 'prism' pixel_kl_options")
        self.beta = per_modality_values(beta, self.modalities, "beta")
        self.delta = per_modality_values(delta, self.modalities, "delta")
        self.fuse = FuseLoss(modalities, num_classes, **seg)
        self.uni = UniLoss(modalities, num_classes, deep=uni_deep, deep_weights=deep_weights,
                           label_resample=label_resample, align_corners=align_corners, **seg)
        self.prm = PrmLoss(modalities, num_classes, weights=deep_weights, label_resample=label_resample,
                           align_corners=align_corners, **seg)
        self.pixel_kl = PixelKLLoss(modalities, num_classes, temperature=temperature, variant=pixel_kl_variant,
                                    deep=pixel_kl_deep, align_corners=align_corners, batch_reduction=batch_reduction,
                                    **kl_options)
        self.proto = ProtoL2Loss(modalities, num_classes, variant=proto_variant, eps=proto_eps,
                                 batch_reduction=batch_reduction)
        self.separate, self.separate_weight = bool(separate), float(separate_weight)
        self.uni_weight = float(uni_weight)
        if weighting not in ("seeds", "passion"):
            raise LossOptionError(f"weighting must be 'seeds' or 'passion', got {weighting!r}")
        self.weighting = weighting
        self.prm_region0 = float(prm_region0)
        self.needs = type(self).needs | ({"sep"} if self.separate else set()) | \
            ({"region0"} if self.prm_region0 else set()) | self.pixel_kl.needs
        self.seg = self.fuse.seg
        self.gss = GssLoss(modalities, num_classes, weight=gss_weight, **gss_options) if gss else None
        self.setup_preference(preference, missing_rates, preference_options, gate)
        if modal_weight and self.missing_rates is None:
            raise LossOptionError("modal_weight=true needs missing_rates")
        self.modal_weight = initial_coefficients(self.missing_rates).tolist() if modal_weight else None
        self._weights = self._constant_weights()

    def _constant_weights(self) -> torch.Tensor:
        """``[3, M]`` float32: the fixed weights of pixel_kl, proto_l2 and the separate-decoder loss per modality
        (beta, delta, separate_weight; times the modal weights with ``weighting="passion"``)."""
        ones = [1.0] * len(self.modalities)
        modal = (self.modal_weight or ones) if self.weighting == "passion" else ones
        return torch.tensor([[b * w for b, w in zip(self.beta, modal, strict=True)],
                             [d * w for d, w in zip(self.delta, modal, strict=True)],
                             [self.separate_weight * w for w in modal]], dtype=torch.float32)

    def to(self, device: torch.device | str) -> PrismLoss:
        """Put the fixed weights and the preference state on ``device`` (before a run's first step)."""
        self._weights = self._weights.to(device)
        return super().to(device)

    def _weights_on(self, device: torch.device) -> torch.Tensor:
        """The ``[3, M]`` fixed weights on ``device``: themselves after ``to(device)``; otherwise moved on this
        call (a compiled step would then trace twice: ``LossSet.to`` moves every term before a run)."""
        if self._weights.device != device:
            self._weights = self._weights.to(device)
        return self._weights

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
        _require(output, ["logits", "deep"] + (["uni"] if with_uni else []) + (["sep"] if self.separate else [])
                 + (["region0"] if self.prm_region0 else []), "prism")
        m = len(self.modalities) if with_uni else 0
        targets = targets_for(batch.label, output.logits.shape[1], batch)
        level0 = [output.logits.unsqueeze(1)] + ([output.uni] if with_uni else []) + \
            ([output.part("sep")] if self.separate else []) + \
            ([output.part("region0").unsqueeze(1)] if self.prm_region0 else [])
        per = self.seg.per_path(torch.cat(level0, 1) if len(level0) > 1 else level0[0], targets.onehot())
        if self.prm_region0:  # the full-resolution region map is scored with level 0, counted in PRM
            per, region0 = per[:, :-1], per[:, -1]
        with_uni_deep = with_uni and self.uni.deep and bool(output.uni_deep)  # None or [] (no coarser level)
        levels = [torch.cat([d.unsqueeze(1), u], 1) for d, u in zip(output.deep, output.uni_deep, strict=True)] \
            if with_uni_deep else [d.unsqueeze(1) for d in output.deep]
        deep = level_losses(levels, targets, weights=self.uni.deep_weights, label_resample=self.uni.label_resample,
                            options=self.seg, align_corners=self.uni.align_corners)  # [B, 1 (+ M)]
        uni = None
        if with_uni:
            uni = reduce_modalities(per[:, 1:1 + m] + deep[:, 1:] if with_uni_deep else per[:, 1:1 + m],
                                    batch.mask, "none")
        sep = reduce_modalities(per[:, 1 + m:], batch.mask, "none") if self.separate else None
        prm = deep[:, 0] + self.prm_region0 * region0 if self.prm_region0 else deep[:, 0]
        return self.seg.reduce_batch(per[:, 0]), uni, self.seg.reduce_batch(prm), sep

    def __call__(self, output: SegOutput, batch: Batch) -> LossResult:
        fuse, uni_bm, prm, sep_bm = self.segmentation(output, batch)
        pixel = self.seg.reduce_batch(self.pixel_kl.per_sample(output, batch))  # [M]
        gaps = self.proto.gaps(output, batch, with_distances=self.needs_distances)
        gap, dist = gaps if self.needs_distances else (gaps, None)
        omega = self.gate(gap, batch.mask, dist)  # [B, M] or None
        proto = self.seg.reduce_batch(gap if omega is None else gap * omega)  # [M]
        weights = self._weights_on(pixel.device)  # [3, M]: pixel_kl, proto_l2, sep
        coef = None if self.preference is None else self.preference.coefficients_on(pixel.device)
        parts = {"fuse": fuse.detach(), "prm": prm.detach(), **modality_parts("pixel_kl", pixel, self.modalities),
                 **modality_parts("proto_l2", proto, self.modalities)}
        passion = self.weighting == "passion"
        # the seeds: E scales pixel_kl and proto_l2; PASSION's code: E scales pixel_kl and sep, omega gates sep
        kl_weighted = weights[0] * pixel if coef is None else weights[0] * pixel * coef
        proto_weighted = weights[1] * proto if coef is None or passion else weights[1] * proto * coef
        contributions = {"fuse": fuse, "prm": prm, "pixel_kl": kl_weighted.sum(), "proto_l2": proto_weighted.sum()}
        if uni_bm is not None:
            uni = self.seg.reduce_batch(uni_bm)
            parts.update(modality_parts("uni", uni, self.modalities))
            contributions["uni"] = self.uni_weight * uni.sum()
        if sep_bm is not None:
            sep = self.seg.reduce_batch(sep_bm)
            parts.update(modality_parts("rfnet_sep", sep, self.modalities))
            if passion:
                sep = self.seg.reduce_batch(sep_bm if omega is None else sep_bm * omega)
                sep = sep if coef is None else sep * coef
            contributions["rfnet_sep"] = (weights[2] * sep).sum()
        if coef is not None:
            parts.update(modality_parts("pref_coef", coef, self.modalities, total=False))
        if self.gss is not None:
            gss = self.gss.per_modality(output, batch)
            contributions["gss"] = self.gss.weight * gss.sum()
            parts.update(modality_parts("gss", gss, self.modalities))
        values = iter(contributions.values())
        total = next(values)
        for value in values:
            total = total + value
        return LossResult(total, parts, {k: v.detach() for k, v in contributions.items()})
