"""Transformer pieces for the bottleneck of mmFormer / M2FTrans: tokens, masked attention layers, fusion nets."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from prism.backbone import Backbone
from prism.errors import ConfigError
from prism.outputs import SegOutput

from .blocks import GroupedResidualEncoder, SharedDecoder, conv_norm_act, stack_modalities, unstack_modalities
from .options import Depth, Heads, TokenDim, UniInEval, Width

UNI_PARTS = frozenset({"uni", "uni_deep", "uni_features"})


class GridEmbedding(nn.Module):
    """A learned ``[dim, g, g, g]`` grid, resized (trilinear) to the token grid of the patch at hand."""

    def __init__(self, dim: int, grid: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(1, dim, grid, grid, grid) * 0.02)

    def forward(self, size: tuple[int, ...]) -> torch.Tensor:
        """``[N, dim]`` tokens for a spatial grid of ``size``."""
        w = self.weight
        if tuple(w.shape[2:]) != tuple(size):
            w = F.interpolate(w, size=size, mode="trilinear", align_corners=False)
        return w.flatten(2)[0].transpose(0, 1)


class AttentionLayer(nn.Module):
    """Pre-norm transformer layer; ``allowed`` (bool, broadcastable to ``[B, heads, T, T]``) masks keys."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int = 8) -> None:
        super().__init__()
        if dim % heads:
            raise ConfigError(f"transformer dim {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(), nn.Linear(mlp_ratio * dim, dim))

    def forward(self, x: torch.Tensor, allowed: torch.Tensor | None = None) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        attn = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
        x = x + self.proj(attn.transpose(1, 2).reshape(b, t, d))
        return x + self.mlp(self.norm2(x))


class MaskedConcatFusion(nn.Module):
    """mmFormer's skip fusion: masked modality features concatenated, then 1x1 -> 3x3 -> 1x1 convolutions."""

    def __init__(self, channels: int, num_modalities: int) -> None:
        super().__init__()
        self.body = nn.Sequential(conv_norm_act(num_modalities * channels, channels, 1),
                                  conv_norm_act(channels, channels), conv_norm_act(channels, channels, 1))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.body(x.flatten(1, 2))  # x is already zero where a modality is missing


class TransformerFusionNet(Backbone):
    """Shared skeleton: grouped modality encoders, a token bottleneck (subclass), per-level skip fusion, a fused
    decoder with deep heads, and a shared per-modality decoder run once over the modalities stacked on the batch.

    Subclasses implement ``bottleneck(features, mask) -> (fused [B, C, ...], per_modality [B, M, C, ...])`` and
    set ``self.skip_fusions`` (one module per level below the bottleneck, ``(x [B, M, C, ...], mask) -> [B, C, ...]``).
    """

    provides = frozenset({"logits", "deep", "uni", "uni_deep", "features", "uni_features"})
    head_patterns = ("fused_decoder.heads.*", "separate_decoder.heads.*")

    def __init__(self, modalities: tuple[str, ...], num_classes: int, *, width: Width, depth: Depth,
                 dim: TokenDim, heads: Heads, uni_in_eval: UniInEval) -> None:
        super().__init__(modalities, num_classes)
        self.dim = dim or 64 * width
        if self.dim % heads:
            raise ConfigError(f"model.options.dim: the token width {self.dim} must be a multiple of heads={heads}")
        self.size_divisor = 2 ** (depth - 1)
        self.uni_in_eval = uni_in_eval
        self.encoder = GroupedResidualEncoder(self.num_modalities, width, depth)
        self.channels = self.encoder.channels
        self.heads = heads
        self.fused_decoder = SharedDecoder(self.channels, num_classes)
        self.separate_decoder = SharedDecoder(self.channels, num_classes)

    def bottleneck(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def forward(self, image: torch.Tensor, mask: torch.Tensor) -> SegOutput:
        self.check_input(image, mask)
        b, m = mask.shape
        mask = mask.to(image.device)
        weight = mask.to(image.dtype)
        levels = [f * weight.view(b, m, 1, 1, 1, 1) for f in self.encoder(image * weight.view(b, m, 1, 1, 1))]
        fused_top, modal_top = self.bottleneck(levels[-1], mask)
        fused = [fusion(x, mask) for fusion, x in zip(self.skip_fusions, levels[:-1], strict=True)] + [fused_top]
        logits, features = self.fused_decoder(fused, with_deep=self.training and "deep" in self.requested)
        out = SegOutput(logits=logits[0], deep=logits[1:] or None, features=features)
        with_uni = bool(self.requested & UNI_PARTS) if self.training else self.uni_in_eval
        if with_uni:
            per_modality = [*levels[:-1], modal_top]
            uni, uni_features = self.separate_decoder([stack_modalities(f) for f in per_modality])
            out.uni = unstack_modalities(uni[0], b)
            out.uni_deep = [unstack_modalities(t, b) for t in uni[1:]]
            out.uni_features = unstack_modalities(uni_features, b)
        return out


def tokens_of(x: torch.Tensor) -> torch.Tensor:
    """``[N, C, d, h, w]`` -> ``[N, d*h*w, C]``."""
    return x.flatten(2).transpose(1, 2)


def grid_of(tokens: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """``[N, T, C]`` -> ``[N, C, *size]``."""
    return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], *size)
