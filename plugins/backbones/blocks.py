"""Building blocks shared by backbones."""

from __future__ import annotations

import torch
from torch import nn


class ConvBlock(nn.Sequential):
    """Two 3x3x3 convolutions with instance norm and LeakyReLU; ``groups`` keeps modality paths separate."""

    def __init__(self, in_channels: int, out_channels: int, *, stride: int = 1, groups: int = 1) -> None:
        super().__init__(
            nn.Conv3d(in_channels, out_channels, 3, stride=stride, padding=1, groups=groups, bias=False),
            nn.InstanceNorm3d(out_channels, affine=True),
            nn.LeakyReLU(0.01, inplace=True),
            nn.Conv3d(out_channels, out_channels, 3, padding=1, groups=groups, bias=False),
            nn.InstanceNorm3d(out_channels, affine=True),
            nn.LeakyReLU(0.01, inplace=True),
        )


def masked_mean(features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over available modalities: features ``[B, M, C, ...]``, mask ``[B, M]`` -> ``[B, C, ...]``."""
    weight = mask.to(features.dtype).view(*mask.shape, *([1] * (features.dim() - 2)))
    return (features * weight).sum(1) / weight.sum(1).clamp_min(1.0)
