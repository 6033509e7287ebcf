"""Registered loss terms: thin adapters from (SegOutput, Batch) to the plain functions."""

from __future__ import annotations

from typing import Literal

from prism.batch import Batch
from prism.loss import LossResult, LossTerm
from prism.outputs import SegOutput

from .segmentation import dice_ce_loss


class FuseLoss(LossTerm):
    """L_fuse: weighted cross-entropy + soft Dice on the fused logits."""

    needs = frozenset({"logits"})

    def __init__(self, modalities: tuple[str, ...], num_classes: int, *, include_background: bool = True,
                 class_weighting: Literal["none", "passion"] = "none", lambda_dice: float = 1.0,
                 lambda_ce: float = 1.0) -> None:
        super().__init__(modalities, num_classes)
        self.options = dict(include_background=include_background, class_weighting=class_weighting,
                            lambda_dice=lambda_dice, lambda_ce=lambda_ce)

    def __call__(self, output: SegOutput, batch: Batch) -> LossResult:
        loss = dice_ce_loss(output.logits, batch.label, **self.options)
        return LossResult(loss, {"fuse": loss.detach()})
