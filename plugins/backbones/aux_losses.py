"""Loss terms for backbone-specific outputs: RFNet's separate-decoder loss."""

from __future__ import annotations

from prism.batch import Batch
from prism.errors import PluginError
from prism.loss import LossResult, LossTerm
from prism.outputs import SegOutput
from prism.plugins.losses import targets_for, uni_loss
from prism.plugins.losses.options import (
    BatchReduction,
    ClassWeightingOption,
    ClassWeights,
    IncludeBackground,
    LambdaCE,
    LambdaDice,
    SegProbFloor,
    SmoothDr,
    SmoothNr,
    TermWeight,
)
from prism.plugins.losses.segmentation import SEG
from prism.plugins.losses.terms import modality_parts, seg_options


class RFNetSeparateLoss(LossTerm):
    """RFNet's L_sep: Dice + CE of the separate decoder's per-modality predictions (``rfnet`` output ``sep``)."""

    needs = frozenset({"sep"})

    def __init__(self, modalities: tuple[str, ...], num_classes: int, *, weight: TermWeight = 1.0,
                 include_background: IncludeBackground = SEG.include_background,
                 class_weighting: ClassWeightingOption = SEG.class_weighting,
                 lambda_dice: LambdaDice = SEG.lambda_dice, lambda_ce: LambdaCE = SEG.lambda_ce,
                 class_weights: ClassWeights = None,
                 smooth_nr: SmoothNr = SEG.smooth_nr, smooth_dr: SmoothDr = SEG.smooth_dr,
                 prob_floor: SegProbFloor = SEG.prob_floor,
                 batch_reduction: BatchReduction = SEG.batch_reduction) -> None:
        super().__init__(modalities, num_classes)
        self.weight = float(weight)
        self.seg = seg_options(include_background=include_background, class_weights=class_weights,
                               class_weighting=class_weighting, lambda_dice=lambda_dice, lambda_ce=lambda_ce,
                               smooth_nr=smooth_nr, smooth_dr=smooth_dr, prob_floor=prob_floor,
                               batch_reduction=batch_reduction)

    def __call__(self, output: SegOutput, batch: Batch) -> LossResult:
        sep = output.part("sep")
        if sep is None:
            raise PluginError("loss 'rfnet_sep' needs the 'sep' output of backbone 'rfnet' in train mode with "
                              "separate_decoder=True")
        per = self.seg.reduce_batch(uni_loss(sep, batch.label, batch.mask, options=self.seg, reduction="none",
                                             targets=targets_for(batch.label, sep.shape[2], batch)))
        return LossResult(self.weight * per.sum(), modality_parts("rfnet_sep", per, self.modalities),
                          {"rfnet_sep": (self.weight * per.sum()).detach()})
