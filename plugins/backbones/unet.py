"""An early-fusion 3D U-Net: missing channels zeroed, the mask given as extra input channels."""

from __future__ import annotations

from typing import Annotated

import torch
from pydantic import Field
from torch import nn

from prism.backbone import Backbone
from prism.outputs import SegOutput

from .blocks import ConvBlock, zero_missing
from .options import Depth, Width


class EarlyFusionUNet(Backbone):
    """3D U-Net on the M image channels (missing ones zeroed) plus M constant mask channels.

    Options: ``width`` (channels at level 0, doubled per level, capped at ``max_width``), ``depth`` (levels).
    Provides ``logits``, ``deep`` (1x1 heads on the coarser decoder levels) and ``features`` (level 0). This is
    the model the MAML-U-Net seed adapts to a new site: one plain network, no per-modality paths.
    """

    provides = frozenset({"logits", "deep", "features"})

    def __init__(self, modalities: tuple[str, ...], num_classes: int, *, width: Width = 16, depth: Depth = 5,
                 max_width: Annotated[int, Field(ge=1, description="cap on the channels of any level")] = 320,
                 ) -> None:
        super().__init__(modalities, num_classes)
        self.size_divisor = 2 ** (depth - 1)
        chans = [min(width * 2**lv, max_width) for lv in range(depth)]
        c_in = 2 * self.num_modalities
        self.encoders = nn.ModuleList(
            ConvBlock(chans[lv - 1] if lv else c_in, chans[lv], stride=1 if lv == 0 else 2) for lv in range(depth)
        )
        self.ups = nn.ModuleList(
            nn.ConvTranspose3d(chans[lv + 1], chans[lv], 2, stride=2, bias=False) for lv in range(depth - 1)
        )
        self.decoders = nn.ModuleList(ConvBlock(2 * chans[lv], chans[lv]) for lv in range(depth - 1))
        self.heads = nn.ModuleList(nn.Conv3d(chans[lv], num_classes, 1) for lv in range(depth - 1))

    def forward(self, image: torch.Tensor, mask: torch.Tensor) -> SegOutput:
        self.check_input(image, mask)
        mask = mask.to(image.device)
        flags = mask.to(image.dtype)[:, :, None, None, None].expand_as(image)
        x = torch.cat([zero_missing(image, mask), flags], dim=1)
        skips = []
        for encoder in self.encoders:
            x = encoder(x)
            skips.append(x)
        y = skips[-1]
        with_deep = self.training and "deep" in self.requested
        levels: list[torch.Tensor] = []
        for lv in reversed(range(len(self.decoders))):
            y = self.decoders[lv](torch.cat([self.ups[lv](y), skips[lv]], dim=1))
            if lv == 0 or with_deep:
                levels.append(self.heads[lv](y))
        levels.reverse()
        return SegOutput(logits=levels[0], deep=levels[1:] if with_deep else None, features=y)
