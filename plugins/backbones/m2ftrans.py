"""M2FTrans: a masked fusion-token transformer bottleneck over the available modalities."""

from __future__ import annotations

from typing import Annotated

import torch
from pydantic import Field
from torch import nn

from .blocks import conv_norm_act
from .options import Depth, Heads, PositionGrid, TokenDim, UniInEval, Width
from .transformer import AttentionLayer, GridEmbedding, TransformerFusionNet, grid_of, tokens_of


def fusion_token_mask(mask: torch.Tensor, tokens: int) -> torch.Tensor:
    """Attention mask ``[B, 1, T, T]`` (True = may attend) for ``tokens`` fusion tokens + M x ``tokens`` tokens.

    Fusion tokens attend to themselves and to every available modality's tokens; a modality's tokens attend to
    the fusion tokens and to their own modality. Keys of missing modalities are never attended. Built with
    tensor ops on the mask's device (no Python loop over modalities or samples).
    """
    b, m = mask.shape
    group = torch.arange(m + 1, device=mask.device).repeat_interleave(tokens)  # 0: fusion, 1 + i: modality i
    key_ok = torch.cat([mask.new_ones(b, 1), mask], dim=1).repeat_interleave(tokens, dim=1)  # [B, T]
    fusion_q, fusion_k = group[:, None] == 0, group[None, :] == 0
    pair_ok = fusion_q | fusion_k | (group[:, None] == group[None, :])  # [T, T]
    return (pair_ok[None] & key_ok[:, None, :]).unsqueeze(1)


class SpatialWeightedFusion(nn.Module):
    """Skip fusion by per-voxel attention over the available modalities (masked softmax), then a 3x3 conv."""

    def __init__(self, channels: int, num_modalities: int) -> None:
        super().__init__()
        m = num_modalities
        self.score = nn.Conv3d(m * channels, m, 1)
        self.body = conv_norm_act(channels, channels)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, m = mask.shape
        scores = self.score(x.flatten(1, 2)).masked_fill(~mask.view(b, m, 1, 1, 1), float("-inf"))
        return self.body((scores.softmax(1).unsqueeze(2) * x).sum(1))


class M2FTrans(TransformerFusionNet):
    """M2FTrans (Shi et al., 2023) on the SegOutput contract.

    The bottleneck tokens of every modality and a set of learned fusion tokens (one per token position) go through
    a transformer whose attention mask (``fusion_token_mask``) excludes missing modalities; the fusion tokens
    become the fused bottleneck and each modality's tokens its own. Skips are fused by per-voxel attention over
    the available modalities. Options: ``width`` (8), ``depth`` (5), ``dim`` (64 * width), ``heads`` (8),
    ``layers`` (2), ``pos_grid`` (8).
    """

    def __init__(self, modalities: tuple[str, ...], num_classes: int, *, width: Width = 8, depth: Depth = 5,
                 dim: TokenDim = None, heads: Heads = 8,
                 layers: Annotated[int, Field(ge=0, description="transformer layers over the modality and fusion "
                                                                "tokens")] = 2,
                 pos_grid: PositionGrid = 8, uni_in_eval: UniInEval = False) -> None:
        super().__init__(modalities, num_classes, width=width, depth=depth, dim=dim, heads=heads,
                         uni_in_eval=uni_in_eval)
        m, c, d = self.num_modalities, self.channels[-1], self.dim
        self.skip_fusions = nn.ModuleList(SpatialWeightedFusion(ch, m) for ch in self.channels[:-1])
        self.to_tokens = nn.Conv3d(m * c, m * d, 1, groups=m)
        self.from_tokens = nn.Conv3d((m + 1) * d, (m + 1) * c, 1, groups=m + 1)
        self.position = GridEmbedding(d, pos_grid)
        self.fusion_tokens = GridEmbedding(d, pos_grid)
        self.modality_embedding = nn.Parameter(torch.randn(m, 1, d) * 0.02)
        self.layers = nn.ModuleList(AttentionLayer(d, heads) for _ in range(layers))

    def bottleneck(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, m = mask.shape
        size = tuple(x.shape[3:])
        t = tokens_of(self.to_tokens(x.flatten(1, 2)).unflatten(1, (m, -1)).flatten(0, 1))  # [B*M, N, D]
        n = t.shape[1]
        pos = self.position(size)
        t = (t.unflatten(0, (b, m)) + pos + self.modality_embedding).flatten(1, 2)  # [B, M*N, D]
        fusion = (self.fusion_tokens(size) + pos).expand(b, n, -1)
        t = torch.cat([fusion, t], dim=1)
        allowed = fusion_token_mask(mask, n)
        for layer in self.layers:
            t = layer(t, allowed)
        keep = torch.cat([mask.new_ones(b, 1), mask], dim=1).to(t.dtype)  # [B, 1 + M]
        t = t.unflatten(1, (m + 1, n)) * keep[:, :, None, None]
        grids = self.from_tokens(grid_of(t.flatten(0, 1), size).unflatten(0, (b, m + 1)).flatten(1, 2))
        grids = grids.unflatten(1, (m + 1, -1))
        return grids[:, 0], grids[:, 1:]
