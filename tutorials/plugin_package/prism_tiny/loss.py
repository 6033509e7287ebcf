"""UniDice: soft Dice of each available modality's own prediction, reusing prism's plain loss function."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from prism.batch import Batch
from prism.loss import LossResult, LossTerm
from prism.outputs import SegOutput
from prism.plugins.losses import soft_dice_loss


class UniDice(LossTerm):
    """Soft Dice of every available modality's own prediction, averaged over (sample, modality) pairs."""

    # The SegOutput parts this term reads: the engine checks the backbone provides them before training,
    # and asks the backbone for them (Backbone.request_parts).
    needs = frozenset({"uni"})

    def __init__(self, modalities: tuple[str, ...], num_classes: int, *,
                 include_background: Annotated[bool, Field(description="count class 0 in the Dice")] = False,
                 ) -> None:
        super().__init__(modalities, num_classes)
        self.include_background = include_background

    def __call__(self, output: SegOutput, batch: Batch) -> LossResult:
        uni = output.uni  # [B, M, K, D, H, W]
        b, m = uni.shape[:2]
        label = batch.label[:, None].expand(b, m, *batch.label.shape[1:]).flatten(0, 1)  # [B * M, D, H, W]
        per_pair = soft_dice_loss(uni.flatten(0, 1).float(), label, include_background=self.include_background,
                                  reduction="none")  # [B * M]: one value per (sample, modality) pair
        weights = batch.mask.flatten().float()  # only the modalities the sample may use count
        total = (per_pair * weights).sum() / weights.sum()
        # total: a scalar tensor (the engine backpropagates it); parts: detached scalars for the training log
        return LossResult(total=total, parts={"uni_dice": total.detach()})
