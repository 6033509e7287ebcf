"""The options of the built-in loss terms, one annotated type each: its type, its limits and its description.

A term's factory annotates each keyword option with one of these, so the registry validates a config's options
(types, limits, unknown keys of the nested option groups) before the term is built, and the generated plugin
reference prints the description. Options shared by several terms (the segmentation loss's) are written once here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Annotated, Literal

from pydantic import ConfigDict, Field
from typing_extensions import TypedDict

NonNegative = Annotated[float, Field(ge=0)]
Rate = Annotated[float, Field(ge=0, lt=1)]

# ---- the segmentation loss (fuse, uni, prm, prism, rfnet_sep) -------------------------------------------------
IncludeBackground = Annotated[bool, Field(description="count class 0 (background) in the soft Dice term")]
ClassWeightingOption = Annotated[Literal["none", "passion"], Field(
    description="'passion': per-sample cross-entropy class weights 1 - |y_c|/|y|, probabilities clamped at "
                "prob_floor before the log (PASSION's code)")]
ClassWeights = Annotated[Sequence[NonNegative] | None, Field(
    description="fixed cross-entropy class weights, one per class (None: unweighted)")]
LambdaDice = Annotated[float, Field(ge=0, description="weight of the soft Dice term")]
LambdaCE = Annotated[float, Field(ge=0, description="weight of the cross-entropy term")]
SmoothNr = Annotated[float, Field(ge=0, description="added to the soft Dice numerator (PASSION: 0)")]
SmoothDr = Annotated[float, Field(ge=0, description="added to the soft Dice denominator (PASSION: 1e-7)")]
SegProbFloor = Annotated[float, Field(gt=0, lt=1, description=(
    "with class_weighting='passion': probabilities clamped to at least this before the log (PASSION: 0.005)"))]
BatchReduction = Annotated[Literal["mean", "sum"], Field(
    description="the per-sample losses are averaged over the batch ('mean', the seeds) or added ('sum', PASSION's "
                "training loop; equal at batch size 1)")]

# ---- deep supervision (uni, prm, prism) --------------------------------------------------------------------------
UniDeep = Annotated[bool, Field(description="also supervise the coarser per-modality levels (uni_deep)")]
DeepWeights = Annotated[Sequence[NonNegative] | None, Field(
    description="weights of the coarser decoder levels, finest first (None: 2^-s for level s = 1, 2, ...)")]
LabelResampleOption = Annotated[Literal["maxpool", "nearest", "upsample"], Field(
    description="a coarser level meets labels max-pooled or subsampled to it, or ('upsample', PASSION's code) its "
                "softmax probabilities upsampled (trilinear) to the labels")]
Region0Weight = Annotated[float, Field(ge=0, description=(
    "weight of the full-resolution region map (RFNet's extra part region0; PASSION's first PRM level: 0.5); "
    "0: not scored"))]
AlignCorners = Annotated[bool, Field(description=(
    "align_corners of every trilinear upsampling of probabilities (PRM with label_resample='upsample', pixel-KL "
    "with deep_resample='upsample'); PASSION: true"))]

# ---- pixel_kl --------------------------------------------------------------------------------------------------
Temperature = Annotated[float, Field(gt=0, description="softmax temperature mu of the pixel-wise KL (4)")]
KLVariant = Annotated[Literal["seeds", "passion"], Field(
    description="'seeds': KL(student || teacher) summed over classes; 'passion': KL(teacher || student) averaged "
                "over classes")]
KLDeep = Annotated[bool, Field(description="also distil the coarser decoder levels (deep, uni_deep)")]
KLProbFloor = Annotated[Annotated[float, Field(gt=0, lt=1)] | None, Field(description=(
    "None: exact log-softmax; a number (PASSION: 0.005): both probabilities clamped to at least this before the "
    "log"))]
ClampedWeight = Annotated[bool, Field(description=(
    "with prob_floor: the KL's weighting probability is the clamped one too, clamp(p_t) (log clamp(p_t) - "
    "log clamp(p_s)) (PASSION's code)"))]
DeepResampleOption = Annotated[Literal["native", "upsample"], Field(
    description="each coarser level compared at its own resolution ('native', the seeds) or both levels' "
                "probabilities upsampled to full resolution first ('upsample', PASSION's code)")]
KLDeepWeights = Annotated[Sequence[NonNegative] | None, Field(
    description="weight of each coarser level's KL, finest first (None: 1 each; PASSION: [0.25, 0.125, 0.0625])")]
KLRegion0Weight = Annotated[float, Field(ge=0, description=(
    "weight of the KL between the full-resolution region maps (RFNet's uni_region0 against region0; PASSION: "
    "0.5); 0: not used"))]
ScaleByTemperature = Annotated[bool, Field(description=(
    "multiply the softened KL by mu^2, the distillation convention (Hinton et al. 2015, sec. 2; PASSION's code); "
    "false: the unscaled KL"))]


class PixelKLOptions(TypedDict, total=False):
    """``pixel_kl_options`` of the ``prism`` term: the ``pixel_kl`` options it passes on."""

    __pydantic_config__ = ConfigDict(extra="forbid")  # type: ignore[misc]

    prob_floor: KLProbFloor
    clamped_weight: ClampedWeight
    deep_resample: DeepResampleOption
    deep_weights: KLDeepWeights
    region0_weight: KLRegion0Weight
    scale_by_temperature: ScaleByTemperature


PixelKLGroup = Annotated[PixelKLOptions | None, Field(
    description="options passed on to the pixel_kl part (its keys below)")]


# ---- proto_l2 --------------------------------------------------------------------------------------------------
ProtoVariant = Annotated[Literal["seeds", "passion"], Field(
    description="'seeds': gap summed over the classes present in the sample; 'passion': averaged over them")]
ProtoEps = Annotated[float, Field(gt=0, description="the cosine similarity's smallest norm (PASSION: 1e-5)")]

# ---- preference-aware regularisation -----------------------------------------------------------------------------
PreferenceEnabled = Annotated[bool, Field(description=(
    "PASSION's preference-aware regularisation: a gate omega from the relative preference and per-modality "
    "coefficients E updated once per epoch (train.epoch_length steps)"))]
MissingRates = Annotated[Sequence[Rate] | Mapping[str, Rate] | Literal["from_split"] | None, Field(
    description="each modality's missing rate FR: a list in the dataset's modality order, a mapping by name "
                "(unnamed: 0), or 'from_split': counted from the training split's availability when the run is "
                "built (PASSION's modal_weight)")]
GateOption = Annotated[Literal["sample", "batch"], Field(
    description="'sample' (the seeds): omega = 1[RP < 0] per sample; 'batch' (PASSION's code): one gate per "
                "modality from the prototype distances over the batch")]
Gamma = Annotated[float, Field(ge=0, description="step size of the coefficient update (0.01)")]
GammaGrowth = Annotated[float, Field(gt=0, description="factor gamma is multiplied by every growth_every epochs")]
GrowthEvery = Annotated[int, Field(ge=1, description="epochs between two growths of gamma (100)")]
ClampRange = Annotated[tuple[NonNegative, NonNegative], Field(
    description="[low, high] the coefficients are clamped to before the projection ([0.1, 4])")]
ProjectionOption = Annotated[Literal["passion", "clamp"], Field(
    description="'passion': clamp then rescale to target_norm * E / ||E||_2; 'clamp': clamp only")]
TargetNorm = Annotated[Annotated[float, Field(gt=0)] | None, Field(
    description="the norm E is rescaled to (None: sqrt(M), 2 for 4 modalities)")]
InitialOption = Annotated[Literal["inverse_rate", "ones"], Field(
    description="E starts at Proj(1 / (1 - FR)) (the seeds) or at 1 (PASSION's imb_beta)")]
ScheduleOption = Annotated[Literal["seeds", "passion"], Field(
    description="'passion': gamma grows before the update of every growth_every-th epoch, epoch 0 included")]
StatisticOption = Annotated[Literal["relative_preference", "pooled_distance"], Field(
    description="the epoch statistic: mean per-sample RP, or ('pooled_distance', PASSION's code) 1 - D_m / "
                "mean_m D from the distances pooled over the epoch")]


class PreferenceOptions(TypedDict, total=False):
    """``preference_options``: the ``PreferenceRegulariser`` options."""

    __pydantic_config__ = ConfigDict(extra="forbid")  # type: ignore[misc]

    gamma: Gamma
    gamma_growth: GammaGrowth
    growth_every: GrowthEvery
    clamp: ClampRange
    projection: ProjectionOption
    target_norm: TargetNorm
    initial: InitialOption
    schedule: ScheduleOption
    statistic: StatisticOption


PreferenceGroup = Annotated[PreferenceOptions | None, Field(
    description="options of the preference-aware regularisation (its keys below)")]


# ---- gss -------------------------------------------------------------------------------------------------------
GssWeight = Annotated[float, Field(ge=0, description="weight of the GSS term (0.5)")]
Anchor = Annotated[str | None, Field(description=(
    "the modality whose confident voxels lead the teacher, by name (FLAIR); None or absent: no high region"))]
High = Annotated[float, Field(gt=0, lt=1, description="the anchor's probability above which a voxel is high")]
Medium = Annotated[float, Field(gt=0, lt=1, description=(
    "the probability every other available modality must exceed for a voxel to be medium"))]
GssFloor = Annotated[float, Field(gt=0, lt=1, description="the teacher is clamped to at least this, renormalised")]
MediumWeights = Annotated[Sequence[NonNegative] | None, Field(
    description="weights of the medium region's mean, one per modality (None: equal)")]
GssDirection = Annotated[Literal["student_teacher", "teacher_student"], Field(
    description="KL(student || teacher) or KL(teacher || student)")]


class GssOptions(TypedDict, total=False):
    """``gss_options`` of the ``prism`` term: the ``gss`` options it passes on."""

    __pydantic_config__ = ConfigDict(extra="forbid")  # type: ignore[misc]

    anchor: Anchor
    high: High
    medium: Medium
    floor: GssFloor
    medium_weights: MediumWeights
    direction: GssDirection


GssGroup = Annotated[GssOptions | None, Field(description="options passed on to the gss part (its keys below)")]


# ---- prism ---------------------------------------------------------------------------------------------------
PerModalityWeight = Annotated[NonNegative | Sequence[NonNegative], Field(
    description="a weight for every modality, or one per modality")]
TermWeight = Annotated[float, Field(ge=0, description="weight of this term (or part) in the total")]
WeightingOption = Annotated[Literal["seeds", "passion"], Field(
    description="'passion': the total weighted as PASSION's train.py (the gate on sep and proto, E on sep and KL, "
                "modal weights 1 / (1 - FR) on all three)")]
ModalWeight = Annotated[bool, Field(description=(
    "PASSION's fixed per-modality factor 1 / (1 - FR) (its modal_weight; needs missing_rates)"))]
GssEnabled = Annotated[bool, Field(description="add the GSS term (guided self-supervision) inside the total")]
Separate = Annotated[bool, Field(description=(
    "score RFNet's separate-decoder predictions (its extra part sep) inside the total, in the same batched call "
    "as the fused and per-modality logits (instead of the rfnet_sep term)"))]
UniWeight = Annotated[float, Field(ge=0, description=(
    "weight of L_uni, the loss on the fused decoder's single-modality paths (PASSION: 0, it has none)"))]
