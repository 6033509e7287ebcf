"""Registered loss terms: thin adapters from (SegOutput, Batch) to the plain functions."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch

from prism.batch import Batch
from prism.loss import LossResult, LossTerm, observation_weight
from prism.outputs import SegOutput

from .deep_supervision import deep_supervision_loss, uni_loss
from .distillation import PIXEL_KL_VARIANTS, pixel_kl_loss
from .errors import LossOptionError, check_keys
from .gss import gss_loss
from .options import (
    AlignCorners,
    Anchor,
    BatchReduction,
    ClampedWeight,
    ClassWeightingOption,
    ClassWeights,
    DeepResampleOption,
    DeepWeights,
    GateOption,
    GssDirection,
    GssFloor,
    GssWeight,
    High,
    IncludeBackground,
    KLDeep,
    KLDeepWeights,
    KLProbFloor,
    KLRegion0Weight,
    KLVariant,
    LabelResampleOption,
    LambdaCE,
    LambdaDice,
    Medium,
    MediumWeights,
    MissingRates,
    PreferenceEnabled,
    PreferenceGroup,
    PreferenceOptions,
    ProtoEps,
    ProtoVariant,
    Region0Weight,
    ScaleByTemperature,
    SegProbFloor,
    SmoothDr,
    SmoothNr,
    Temperature,
    UniDeep,
)
from .preference import PreferenceRegulariser, batch_preference_gate, preference_gate, relative_preference
from .prototypes import PROTO_VARIANTS, proto_gap
from .segmentation import SEG, SegLossOptions
from .targets import targets_for

GateMode = Literal["sample", "batch"]


def seg_options(*, include_background: bool = SEG.include_background,
                class_weights: Sequence[float] | None = SEG.class_weights,
                class_weighting: str = SEG.class_weighting, lambda_dice: float = SEG.lambda_dice,
                lambda_ce: float = SEG.lambda_ce, smooth_nr: float = SEG.smooth_nr, smooth_dr: float = SEG.smooth_dr,
                prob_floor: float = SEG.prob_floor, batch_reduction: str = SEG.batch_reduction) -> SegLossOptions:
    """SegLossOptions from term options (lists become tuples)."""
    return SegLossOptions(include_background=include_background,
                          class_weights=None if class_weights is None else tuple(class_weights),
                          class_weighting=class_weighting, lambda_dice=lambda_dice,  # type: ignore[arg-type]
                          lambda_ce=lambda_ce, smooth_nr=smooth_nr, smooth_dr=smooth_dr, prob_floor=prob_floor,
                          batch_reduction=batch_reduction)  # type: ignore[arg-type]


def per_modality_values(value: float | Sequence[float], modalities: tuple[str, ...], name: str) -> list[float]:
    """A scalar broadcast to every modality, or a list with one value per modality."""
    if isinstance(value, int | float):
        return [float(value)] * len(modalities)
    values = [float(v) for v in value]
    if len(values) != len(modalities):
        raise LossOptionError(f"{name} has {len(values)} values for modalities {list(modalities)}")
    return values


def variant_options(table: dict[str, dict[str, Any]], variant: str, name: str) -> dict[str, Any]:
    if variant not in table:
        raise LossOptionError(f"{name} must be one of {sorted(table)}, got {variant!r}")
    return dict(table[variant])


def anchor_index(modalities: tuple[str, ...], anchor: str | None) -> int | None:
    """Index of the anchor modality (FLAIR for GSS) by name, or None when absent."""
    return modalities.index(anchor) if anchor is not None and anchor in modalities else None


def modality_parts(prefix: str, values: torch.Tensor, modalities: tuple[str, ...], *, total: bool = True
                   ) -> dict[str, torch.Tensor]:
    """``{prefix: sum, prefix/<modality>: value}`` from per-modality values ``[M]`` (detached)."""
    values = values.detach()
    parts = {prefix: values.sum()} if total else {}
    parts.update({f"{prefix}/{name}": values[i] for i, name in enumerate(modalities)})
    return parts


def batch_reduce(values: torch.Tensor, reduction: str) -> torch.Tensor:
    """``[B, ...]`` -> ``[...]``: the batch mean (``"mean"``) or sum (``"sum"``)."""
    if reduction not in ("mean", "sum"):
        raise LossOptionError(f"batch_reduction must be 'mean' or 'sum', got {reduction!r}")
    return values.sum(0) if reduction == "sum" else values.mean(0)


def _require(output: SegOutput, names: Sequence[str], term: str) -> None:
    missing = [n for n in names if output.part(n) is None]
    if missing:
        raise ValueError(f"loss '{term}' needs SegOutput part(s) {missing}, which this output lacks "
                         "(is the backbone in train mode, with these parts requested?)")


class FuseLoss(LossTerm):
    """L_fuse: weighted cross-entropy + soft Dice on the fused logits."""

    needs = frozenset({"logits"})

    def __init__(self, modalities: tuple[str, ...], num_classes: int, *,
                 include_background: IncludeBackground = SEG.include_background,
                 class_weighting: ClassWeightingOption = SEG.class_weighting,
                 lambda_dice: LambdaDice = SEG.lambda_dice, lambda_ce: LambdaCE = SEG.lambda_ce,
                 class_weights: ClassWeights = None,
                 smooth_nr: SmoothNr = SEG.smooth_nr, smooth_dr: SmoothDr = SEG.smooth_dr,
                 prob_floor: SegProbFloor = SEG.prob_floor,
                 batch_reduction: BatchReduction = SEG.batch_reduction) -> None:
        super().__init__(modalities, num_classes)
        self.seg = seg_options(include_background=include_background, class_weights=class_weights,
                               class_weighting=class_weighting, lambda_dice=lambda_dice, lambda_ce=lambda_ce,
                               smooth_nr=smooth_nr, smooth_dr=smooth_dr, prob_floor=prob_floor,
                               batch_reduction=batch_reduction)

    def __call__(self, output: SegOutput, batch: Batch) -> LossResult:
        targets = targets_for(batch.label, output.logits.shape[1], batch)
        loss = self.seg.reduce_batch(self.seg.per_path(output.logits.unsqueeze(1), targets.onehot())[:, 0])
        return LossResult(loss, {"fuse": loss.detach()})


class UniLoss(LossTerm):
    """L_uni: Dice + CE of every available modality's own prediction (deep supervision over uni_deep if given)."""

    needs = frozenset({"uni"})

    def __init__(self, modalities: tuple[str, ...], num_classes: int, *, deep: UniDeep = True,
                 deep_weights: DeepWeights = None, label_resample: LabelResampleOption = "maxpool",
                 align_corners: AlignCorners = False, include_background: IncludeBackground = SEG.include_background,
                 class_weighting: ClassWeightingOption = SEG.class_weighting, lambda_dice: LambdaDice = SEG.lambda_dice,
                 lambda_ce: LambdaCE = SEG.lambda_ce, class_weights: ClassWeights = None,
                 smooth_nr: SmoothNr = SEG.smooth_nr,
                 smooth_dr: SmoothDr = SEG.smooth_dr, prob_floor: SegProbFloor = SEG.prob_floor,
                 batch_reduction: BatchReduction = SEG.batch_reduction) -> None:
        super().__init__(modalities, num_classes)
        self.deep, self.deep_weights, self.label_resample = deep, deep_weights, label_resample
        self.align_corners = bool(align_corners)
        self.seg = seg_options(include_background=include_background, class_weights=class_weights,
                               class_weighting=class_weighting, lambda_dice=lambda_dice, lambda_ce=lambda_ce,
                               smooth_nr=smooth_nr, smooth_dr=smooth_dr, prob_floor=prob_floor,
                               batch_reduction=batch_reduction)

    def per_modality(self, output: SegOutput, batch: Batch) -> torch.Tensor:
        _require(output, ["uni"], "uni")
        per = uni_loss(output.uni, batch.label, batch.mask, uni_deep=output.uni_deep if self.deep else None,
                       weights=self.deep_weights, label_resample=self.label_resample, options=self.seg,
                       reduction="none", targets=targets_for(batch.label, output.uni.shape[2], batch),
                       align_corners=self.align_corners)
        return self.seg.reduce_batch(per)

    def __call__(self, output: SegOutput, batch: Batch) -> LossResult:
        per = self.per_modality(output, batch)
        return LossResult(per.sum(), modality_parts("uni", per, self.modalities))


class PrmLoss(LossTerm):
    """L_PRM: deep supervision of the fused decoder levels, weights 2^-s, labels max-pooled to each level.

    ``region0_weight``: also score the full-resolution region map (RFNet's extra part ``region0``, PASSION's first
    PRM level, weight 1/2 there); the term then needs ``region0``.
    """

    needs = frozenset({"deep"})

    def __init__(self, modalities: tuple[str, ...], num_classes: int, *, weights: DeepWeights = None,
                 label_resample: LabelResampleOption = "maxpool", region0_weight: Region0Weight = 0.0,
                 align_corners: AlignCorners = False, include_background: IncludeBackground = SEG.include_background,
                 class_weighting: ClassWeightingOption = SEG.class_weighting, lambda_dice: LambdaDice = SEG.lambda_dice,
                 lambda_ce: LambdaCE = SEG.lambda_ce, class_weights: ClassWeights = None,
                 smooth_nr: SmoothNr = SEG.smooth_nr,
                 smooth_dr: SmoothDr = SEG.smooth_dr, prob_floor: SegProbFloor = SEG.prob_floor,
                 batch_reduction: BatchReduction = SEG.batch_reduction) -> None:
        super().__init__(modalities, num_classes)
        self.weights, self.label_resample = weights, label_resample
        self.region0_weight = float(region0_weight)
        self.align_corners = bool(align_corners)
        if self.region0_weight:
            self.needs = type(self).needs | {"region0"}
        self.seg = seg_options(include_background=include_background, class_weights=class_weights,
                               class_weighting=class_weighting, lambda_dice=lambda_dice, lambda_ce=lambda_ce,
                               smooth_nr=smooth_nr, smooth_dr=smooth_dr, prob_floor=prob_floor,
                               batch_reduction=batch_reduction)

    def __call__(self, output: SegOutput, batch: Batch) -> LossResult:
        _require(output, ["deep"] + (["region0"] if self.region0_weight else []), "prm")
        targets = targets_for(batch.label, output.logits.shape[1], batch)
        per = deep_supervision_loss(output.deep, batch.label, weights=self.weights,
                                    label_resample=self.label_resample, options=self.seg, targets=targets,
                                    align_corners=self.align_corners)
        if self.region0_weight:
            region0 = output.part("region0").unsqueeze(1)
            per = per + self.region0_weight * self.seg.per_path(region0, targets.onehot())[:, 0]
        loss = self.seg.reduce_batch(per)
        return LossResult(loss, {"prm": loss.detach()})


class PixelKLLoss(LossTerm):
    """L_pixel: KL between every available modality's and the (detached) fused prediction, temperature mu.

    Summed over the decoder levels when the output has ``deep`` and ``uni_deep`` (and ``deep=True``), times mu^2
    (the distillation convention; ``scale_by_temperature=False``: unscaled). ``variant="seeds"``:
    KL(student || teacher), summed over classes; ``"passion"``: KL(teacher || student), mean over classes.
    PASSION's code also clamps both probabilities (``prob_floor=0.005``) and weights by the clamped teacher
    (``clamped_weight``), compares the coarser levels upsampled to full resolution (``deep_resample="upsample"``,
    ``align_corners=True``) with weights 1/4, 1/8, 1/16 (``deep_weights``) and adds the full-resolution region maps
    at 1/2 (``region0_weight``: RFNet's parts ``uni_region0`` and ``region0``); see ``pixel_kl_loss``.
    """

    needs = frozenset({"logits", "uni"})

    def __init__(self, modalities: tuple[str, ...], num_classes: int, *, temperature: Temperature = 4.0,
                 variant: KLVariant = "seeds", deep: KLDeep = True, prob_floor: KLProbFloor = None,
                 clamped_weight: ClampedWeight = False, deep_resample: DeepResampleOption = "native",
                 deep_weights: KLDeepWeights = None, region0_weight: KLRegion0Weight = 0.0,
                 scale_by_temperature: ScaleByTemperature = True, align_corners: AlignCorners = False,
                 batch_reduction: BatchReduction = SEG.batch_reduction) -> None:
        super().__init__(modalities, num_classes)
        if clamped_weight and prob_floor is None:
            raise LossOptionError("pixel_kl: clamped_weight=true needs prob_floor (the clamp)")
        self.temperature, self.deep = float(temperature), bool(deep)
        self.batch_reduction = batch_reduction
        batch_reduce(torch.zeros(1), batch_reduction)  # refuses an unknown reduction now, not at step 1
        self.region0_weight = float(region0_weight)
        self.kl = variant_options(PIXEL_KL_VARIANTS, variant, "pixel_kl variant")
        self.kl.update(prob_floor=prob_floor, clamped_weight=bool(clamped_weight), deep_resample=deep_resample,
                       deep_weights=None if deep_weights is None else [float(w) for w in deep_weights],
                       region0_weight=self.region0_weight, scale_by_temperature=bool(scale_by_temperature),
                       align_corners=bool(align_corners))
        if self.region0_weight:
            self.needs = type(self).needs | {"region0", "uni_region0"}

    def per_sample(self, output: SegOutput, batch: Batch) -> torch.Tensor:
        """``[B, M]``: each sample's KL per modality (0 where the modality is missing)."""
        _require(output, ["logits", "uni"] + (["region0", "uni_region0"] if self.region0_weight else []),
                 "pixel_kl")
        deep = self.deep and output.deep is not None and output.uni_deep is not None
        return pixel_kl_loss(output.uni, output.logits, batch.mask,
                             student_deep=output.uni_deep if deep else None,
                             teacher_deep=output.deep if deep else None,
                             student_region0=output.part("uni_region0"), teacher_region0=output.part("region0"),
                             temperature=self.temperature, reduction="none", **self.kl)

    def per_modality(self, output: SegOutput, batch: Batch) -> torch.Tensor:
        """``[M]``: the batch mean or sum (``batch_reduction``) of ``per_sample``."""
        return batch_reduce(self.per_sample(output, batch), self.batch_reduction)

    def __call__(self, output: SegOutput, batch: Batch) -> LossResult:
        per = self.per_modality(output, batch)
        return LossResult(per.sum(), modality_parts("pixel_kl", per, self.modalities))


def rates_by_modality(rates: Sequence[float] | Mapping[str, float] | str | None, modalities: tuple[str, ...]
                      ) -> list[float] | None:
    """Missing rates in the dataset's modality order; a mapping names them ({flair: 0.6, ...}, unnamed = 0).

    Raises:
        LossOptionError: unknown modality names, a list of the wrong length, or ``"from_split"`` (which the
            trainer resolves from the training split before the term is built).
    """
    if isinstance(rates, str):
        raise LossOptionError(f"missing_rates={rates!r} is resolved from the training split when a run is built "
                              "(prism-train); a term built by hand takes the rates themselves")
    if rates is None:
        return None
    if not isinstance(rates, Mapping):
        values = [float(r) for r in rates]
        if len(values) != len(modalities):
            raise LossOptionError(f"missing_rates has {len(values)} entries for modalities {list(modalities)}")
        return values
    unknown = sorted(set(rates) - set(modalities))
    if unknown:
        raise LossOptionError(f"missing_rates names unknown modalities {unknown}; modalities: {list(modalities)}")
    return [float(rates.get(m, 0.0)) for m in modalities]


class PreferenceTerm(LossTerm):
    """A term that may carry the preference-aware regulariser; its state goes through ``state_dict``."""

    preference: PreferenceRegulariser | None = None
    gate_mode: GateMode = "sample"

    def setup_preference(self, enabled: bool, missing_rates: Sequence[float] | Mapping[str, float] | str | None,
                         options: PreferenceOptions | None, gate: GateMode = "sample") -> None:
        options = dict(options or {})
        check_keys(options, PreferenceRegulariser, "preference options")
        if gate not in ("sample", "batch"):
            raise LossOptionError(f"gate must be 'sample' or 'batch', got {gate!r}")
        self.gate_mode = gate
        self.missing_rates = rates_by_modality(missing_rates, self.modalities)
        self.preference = PreferenceRegulariser(len(self.modalities), missing_rates=self.missing_rates, **options) \
            if enabled else None

    @property
    def epoch_schedule(self) -> bool:
        """Whether the term changes at epoch ends (``on_epoch_end``): the preference coefficients."""
        return self.preference is not None

    def to(self, device: torch.device | str) -> PreferenceTerm:
        """Move the term's tensors (the preference coefficients and statistics) to ``device`` before a run."""
        if self.preference is not None:
            self.preference.to(device)
        return self

    @property
    def needs_distances(self) -> bool:
        """Whether the gate or the epoch statistic reads the absolute prototype distances."""
        return self.preference is not None and (self.gate_mode == "batch"
                                                or self.preference.statistic == "pooled_distance")

    def gate(self, gap: torch.Tensor, mask: torch.Tensor, distance: torch.Tensor | None = None
             ) -> torch.Tensor | None:
        """omega ``[B, M]`` (statistics recorded on training batches only: ``prism.loss.observation_weight()``).

        ``gate="sample"`` (the seeds): omega = 1[RP < 0] per sample from the gap; ``"batch"`` (PASSION's code):
        one gate per modality from the absolute distances summed over the batch (``batch_preference_gate``).
        """
        if self.preference is None:
            return None
        rp = relative_preference(gap, mask)
        if torch.is_grad_enabled():  # recorded with weight 0 inside observation(False): one compiled graph
            self.preference.observe(rp, mask, distance, weight=observation_weight())
        if self.gate_mode == "batch":
            if distance is None:
                raise ValueError("gate='batch' needs the prototype distances")
            return batch_preference_gate(distance, mask)
        return preference_gate(rp, mask)

    def state_dict(self) -> dict[str, Any]:
        return {} if self.preference is None else {"preference": self.preference.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.preference is not None and "preference" in state:
            self.preference.load_state_dict(state["preference"])

    def on_epoch_end(self) -> None:
        if self.preference is not None:
            self.preference.on_epoch_end()


class ProtoL2Loss(PreferenceTerm):
    """L_proto: squared gap of per-modality vs fused (detached) prototype similarity maps at level 0.

    ``variant="seeds"``: sum over the classes present in the sample; ``"passion"``: mean over them.
    ``preference=True`` gates it with omega = 1[RP < 0] and scales modality m by E^m (updated in
    ``on_epoch_end``; ``preference_options``: see ``PreferenceRegulariser``).
    """

    needs = frozenset({"features", "uni_features"})

    def __init__(self, modalities: tuple[str, ...], num_classes: int, *, variant: ProtoVariant = "seeds",
                 eps: ProtoEps = 1e-8, preference: PreferenceEnabled = False, missing_rates: MissingRates = None,
                 gate: GateOption = "sample", preference_options: PreferenceGroup = None,
                 batch_reduction: BatchReduction = SEG.batch_reduction) -> None:
        super().__init__(modalities, num_classes)
        self.proto = variant_options(PROTO_VARIANTS, variant, "proto_l2 variant")
        self.proto["eps"] = float(eps)
        self.batch_reduction = batch_reduction
        batch_reduce(torch.zeros(1), batch_reduction)
        self.setup_preference(preference, missing_rates, preference_options, gate)

    def gaps(self, output: SegOutput, batch: Batch, with_distances: bool = False
             ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """The prototype gap D ``[B, M]`` (missing modalities zeroed); with ``with_distances`` also the absolute
        distances ``[B, M]`` (what PASSION's preference gate and epoch statistic read)."""
        _require(output, ["features", "uni_features"], "proto_l2")
        if tuple(batch.mask.shape) != tuple(output.uni_features.shape[:2]):
            raise ValueError(f"mask must be [B, M] = {tuple(output.uni_features.shape[:2])}, "
                             f"got {tuple(batch.mask.shape)}")
        value = proto_gap(output.uni_features, output.features, batch.label, num_classes=self.num_classes,
                          onehot=targets_for(batch.label, self.num_classes, batch).onehot(),
                          with_absolute=with_distances, **self.proto)
        m = batch.mask.to(value[0].dtype if with_distances else value.dtype)
        if with_distances:
            return value[0] * m, value[1] * m
        return value * m

    def __call__(self, output: SegOutput, batch: Batch) -> LossResult:
        gap, dist = self.gaps(output, batch, with_distances=True) if self.needs_distances else \
            (self.gaps(output, batch), None)
        omega = self.gate(gap, batch.mask, dist)
        per = batch_reduce(gap if omega is None else gap * omega, self.batch_reduction)
        parts = modality_parts("proto_l2", per, self.modalities)
        if self.preference is not None:
            coef = self.preference.coefficients_on(per.device)
            per = per * coef
            parts.update(modality_parts("pref_coef", coef, self.modalities, total=False))
        return LossResult(per.sum(), parts)


class GssLoss(LossTerm):
    """GSS: KL of each available modality's prediction to a confidence-region teacher (weight 0.5).

    The anchor (high-confidence) modality is found by name (``anchor="flair"``); without it there is no high
    region.
    """

    needs = frozenset({"uni"})

    def __init__(self, modalities: tuple[str, ...], num_classes: int, *, weight: GssWeight = 0.5,
                 anchor: Anchor = "flair", high: High = 0.65, medium: Medium = 0.75, floor: GssFloor = 0.005,
                 medium_weights: MediumWeights = None, direction: GssDirection = "student_teacher") -> None:
        super().__init__(modalities, num_classes)
        self.weight = float(weight)
        self.options = dict(anchor=anchor_index(self.modalities, anchor), high=high, medium=medium, floor=floor,
                            medium_weights=None if medium_weights is None else list(medium_weights),
                            direction=direction)

    def per_modality(self, output: SegOutput, batch: Batch) -> torch.Tensor:
        _require(output, ["uni"], "gss")
        return gss_loss(output.uni, batch.mask, reduction="per_modality", **self.options)

    def __call__(self, output: SegOutput, batch: Batch) -> LossResult:
        per = self.per_modality(output, batch)
        return LossResult(self.weight * per.sum(), modality_parts("gss", per, self.modalities))
