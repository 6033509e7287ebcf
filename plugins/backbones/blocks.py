"""Building blocks shared by backbones."""

from __future__ import annotations

import torch
from torch import nn


def instance_norm(channels: int, *, affine: bool = True) -> nn.GroupNorm:
    """Instance norm, with a per-channel affine unless ``affine=False``, as ``GroupNorm(C, C)``.

    The same function as ``nn.InstanceNorm3d(C, affine=affine)`` (statistics per sample and channel over the
    spatial axes, biased variance, eps 1e-5) with the same parameters and state_dict keys (``weight``, ``bias``),
    so checkpoints written with either load into the other. It costs one kernel forward and one backward, where
    InstanceNorm3d repeats its affine parameters per sample and runs batch norm (5 forward and about 8 backward
    ops per use, most of them copies).

    Args:
        channels: C, the channels of the ``[B, C, ...]`` input.
        affine: learn a per-channel scale and shift (RFNet's units have none).

    Returns:
        The norm layer.
    """
    return nn.GroupNorm(channels, channels, eps=1e-5, affine=affine)


class ConvBlock(nn.Sequential):
    """Two 3x3x3 convolutions with instance norm and LeakyReLU; ``groups`` keeps modality paths separate."""

    def __init__(self, in_channels: int, out_channels: int, *, stride: int = 1, groups: int = 1) -> None:
        super().__init__(
            nn.Conv3d(in_channels, out_channels, 3, stride=stride, padding=1, groups=groups, bias=False),
            instance_norm(out_channels),
            nn.LeakyReLU(0.01, inplace=True),
            nn.Conv3d(out_channels, out_channels, 3, padding=1, groups=groups, bias=False),
            instance_norm(out_channels),
            nn.LeakyReLU(0.01, inplace=True),
        )


def masked_mean(features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over available modalities: features ``[B, M, C, ...]``, mask ``[B, M]`` -> ``[B, C, ...]``."""
    weight = mask.to(features.dtype).view(*mask.shape, *([1] * (features.dim() - 2)))
    return (features * weight).sum(1) / weight.sum(1).clamp_min(1.0)


def conv_norm_act(in_channels: int, out_channels: int, kernel_size: int = 3, *, stride: int = 1, groups: int = 1,
                  slope: float = 0.2, bias: bool = False, affine: bool = True) -> nn.Sequential:
    """Convolution, instance norm, LeakyReLU: the unit of the RFNet lineage (``groups`` keeps paths apart).

    ``bias=True, affine=False`` is RFNet's own unit (``general_conv3d``: a convolution with a bias, then
    ``InstanceNorm3d`` without affine parameters; Ding et al., ICCV 2021, github.com/dyh127/RFNet layers.py): the
    norm cancels the bias, which only keeps RFNet's parameter count. The default is a bias-free convolution and
    an affine norm (the same number of launches).
    """
    return nn.Sequential(
        nn.Conv3d(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2, groups=groups,
                  bias=bias),
        instance_norm(out_channels, affine=affine),
        nn.LeakyReLU(slope, inplace=True),
    )


def zero_missing(features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Zero the features of missing modalities: features ``[B, M, ...]``, mask ``[B, M]``."""
    return features * mask.to(features.dtype).view(*mask.shape, *([1] * (features.dim() - 2)))


def up2(x: torch.Tensor) -> torch.Tensor:
    """Trilinear upsampling by 2 (no parameters)."""
    return nn.functional.interpolate(x, scale_factor=2, mode="trilinear", align_corners=True)


class GroupedResidualEncoder(nn.Module):
    """M single-channel encoders run as one grouped convolution (RFNet/mmFormer style).

    Level ``l`` has ``width * 2**l`` channels per modality; level 0 keeps the input size, each further level
    halves it with a strided convolution. Each level is ``c1`` then a residual ``c3(c2(.))``. ``bias``, ``affine``:
    the units' (``conv_norm_act``).
    Input ``[B, M, D, H, W]``; output: one ``[B, M, C_l, ...]`` tensor per level.
    """

    def __init__(self, num_modalities: int, width: int, depth: int, *, bias: bool = False, affine: bool = True
                 ) -> None:
        super().__init__()
        m = num_modalities
        self.num_modalities = m
        self.channels = [width * 2**lv for lv in range(depth)]
        self.first = nn.ModuleList()
        self.rest = nn.ModuleList()
        unit = {"bias": bias, "affine": affine}  # see conv_norm_act
        for lv, c in enumerate(self.channels):
            c_in = self.channels[lv - 1] if lv else 1
            self.first.append(conv_norm_act(m * c_in, m * c, stride=1 if lv == 0 else 2, groups=m, **unit))
            self.rest.append(nn.Sequential(conv_norm_act(m * c, m * c, groups=m, **unit),
                                           conv_norm_act(m * c, m * c, groups=m, **unit)))

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        x, levels = image, []
        for first, rest in zip(self.first, self.rest, strict=True):
            x = first(x)
            x = x + rest(x)
            levels.append(x.unflatten(1, (self.num_modalities, -1)))
        return levels


class SharedDecoder(nn.Module):
    """A U-Net decoder with a 1x1 head at every level, for paths stacked along the batch.

    ``forward(skips)`` takes one ``[N, C_l, ...]`` tensor per level (finest first, the last is the bottleneck) and
    returns ``(logits per level finest first, level-0 features)``; the head of the coarsest level reads the
    bottleneck. Each step: ``c1(up(y))``, concatenated with the skip, ``c2`` then a 1x1 ``out``.
    """

    def __init__(self, channels: list[int], num_classes: int, *, deep_heads: bool = True, bias: bool = False,
                 affine: bool = True) -> None:
        super().__init__()
        unit = {"bias": bias, "affine": affine}  # see conv_norm_act
        top = len(channels) - 1
        self.c1 = nn.ModuleList(conv_norm_act(channels[lv + 1], channels[lv], **unit) for lv in range(top))
        self.c2 = nn.ModuleList(conv_norm_act(2 * channels[lv], channels[lv], **unit) for lv in range(top))
        self.out = nn.ModuleList(conv_norm_act(channels[lv], channels[lv], 1, **unit) for lv in range(top))
        n_heads = len(channels) if deep_heads else 1
        self.heads = nn.ModuleList(nn.Conv3d(channels[lv], num_classes, 1) for lv in range(n_heads))

    def forward(self, skips: list[torch.Tensor], with_deep: bool = True) -> tuple[list[torch.Tensor], torch.Tensor]:
        y = skips[-1]
        logits: list[torch.Tensor] = []
        top = len(skips) - 1
        if with_deep and len(self.heads) > top:
            logits.append(self.heads[top](y))
        for lv in reversed(range(top)):
            y = self.out[lv](self.c2[lv](torch.cat([self.c1[lv](up2(y)), skips[lv]], dim=1)))
            if lv == 0 or (with_deep and len(self.heads) > 1):
                logits.append(self.heads[lv](y))
        logits.reverse()
        return logits, y


def unstack_modalities(t: torch.Tensor, batch: int) -> torch.Tensor:
    """``[M * B, ...]`` (modality-major) -> ``[B, M, ...]``."""
    return t.unflatten(0, (-1, batch)).transpose(0, 1)


def stack_modalities(t: torch.Tensor) -> torch.Tensor:
    """``[B, M, ...]`` -> ``[M * B, ...]`` (modality-major), for one batched pass over the modalities."""
    return t.transpose(0, 1).flatten(0, 1)
