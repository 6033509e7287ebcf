"""TinyNet: a backbone with one encoder shared by every modality, fused by averaging the available ones."""

from __future__ import annotations

from typing import Annotated

import torch
from pydantic import Field
from torch import nn

from prism.backbone import Backbone
from prism.outputs import SegOutput


class TinyNet(Backbone):
    """One shared convolutional encoder per modality, mean fusion over the available modalities, a 1x1 head."""

    # The SegOutput parts this backbone can return in train mode ("logits" is always required).
    provides = frozenset({"logits", "uni"})
    # Every spatial size of the input must be a multiple of this (1: no pooling).
    size_divisor = 1

    def __init__(self, modalities: tuple[str, ...], num_classes: int, *,
                 width: Annotated[int, Field(ge=1, le=256, description="channels of the shared encoder")] = 8,
                 ) -> None:
        super().__init__(modalities, num_classes)
        self.encoder = nn.Sequential(nn.Conv3d(1, width, 3, padding=1), nn.InstanceNorm3d(width), nn.LeakyReLU())
        self.head = nn.Conv3d(width, num_classes, 1)

    def forward(self, image: torch.Tensor, mask: torch.Tensor) -> SegOutput:
        """image ``[B, M, D, H, W]``, mask ``[B, M]`` bool (True = the modality may be used)."""
        self.check_input(image, mask)  # a wrong shape is a one-line error, not a traceback
        b, m = image.shape[:2]
        weights = mask.to(image.dtype)[:, :, None, None, None]
        image = image * weights  # never read a masked-out channel, whatever it holds
        # Each modality through the same encoder: [B * M, 1, D, H, W] -> [B, M, C, D, H, W].
        feats = self.encoder(image.reshape(b * m, 1, *image.shape[2:])).reshape(b, m, -1, *image.shape[2:])
        # Average the available modalities' features only.
        fused = (feats * weights[:, :, None]).sum(1) / weights[:, :, None].sum(1).clamp(min=1)
        out = SegOutput(logits=self.head(fused))
        # "uni": each modality's own prediction [B, M, K, D, H, W]. Computed only when a loss asked for it
        # (the engine calls request_parts with what the configured losses need) and only in train mode.
        if self.training and "uni" in self.requested:
            out.uni = self.head(feats.flatten(0, 1)).unflatten(0, (b, m))
        return out
