"""Built-in losses: plain functions on tensors (import and call them anywhere) and registered terms.

>>> from prism.plugins.losses import dice_ce_loss
>>> loss = dice_ce_loss(logits, labels)
"""

from __future__ import annotations

from prism.registry import hookimpl

from .segmentation import cross_entropy_loss, dice_ce_loss, soft_dice_loss
from .terms import FuseLoss

__all__ = ["cross_entropy_loss", "dice_ce_loss", "soft_dice_loss", "FuseLoss"]


@hookimpl
def register_losses(register):
    register("fuse", FuseLoss)
