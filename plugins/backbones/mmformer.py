"""mmFormer: modality encoders, intra-modal transformers, a masked inter-modal transformer, a fusion decoder."""

from __future__ import annotations

from typing import Annotated

import torch
from pydantic import Field
from torch import nn

from .options import Depth, Heads, PositionGrid, TokenDim, UniInEval, Width
from .transformer import AttentionLayer, GridEmbedding, MaskedConcatFusion, TransformerFusionNet, grid_of, tokens_of


class MMFormer(TransformerFusionNet):
    """mmFormer (Zhang et al., MICCAI 2022) on the SegOutput contract.

    Bottleneck tokens of each modality (1x1 projection to ``dim``, learned position and modality embeddings) go
    through an intra-modal transformer (weights shared by the modalities, told apart by the modality embedding;
    all modalities in one batched call), then through an inter-modal transformer over the tokens of all
    modalities in which missing modalities' tokens are excluded as keys by the attention mask (the peer lets
    zeroed tokens take part). Every level's skip is the masked concatenation of the modality features through a
    1x1-3x3-1x1 stack. Options: ``width`` (8), ``depth`` (5), ``dim`` (64 * width), ``heads`` (8),
    ``intra_layers`` / ``inter_layers`` (1 / 1), ``pos_grid`` (8: the token grid of a 128^3 patch).
    """

    def __init__(self, modalities: tuple[str, ...], num_classes: int, *, width: Width = 8, depth: Depth = 5,
                 dim: TokenDim = None, heads: Heads = 8,
                 intra_layers: Annotated[int, Field(ge=0, description="intra-modal transformer layers")] = 1,
                 inter_layers: Annotated[int, Field(ge=0, description="inter-modal transformer layers")] = 1,
                 pos_grid: PositionGrid = 8, uni_in_eval: UniInEval = False) -> None:
        super().__init__(modalities, num_classes, width=width, depth=depth, dim=dim, heads=heads,
                         uni_in_eval=uni_in_eval)
        m, c, d = self.num_modalities, self.channels[-1], self.dim
        self.skip_fusions = nn.ModuleList(MaskedConcatFusion(ch, m) for ch in self.channels[:-1])
        self.to_tokens = nn.Conv3d(m * c, m * d, 1, groups=m)
        self.from_tokens = nn.Conv3d(m * d, m * c, 1, groups=m)
        self.position = GridEmbedding(d, pos_grid)
        self.modality_embedding = nn.Parameter(torch.randn(m, 1, d) * 0.02)
        self.intra = nn.ModuleList(AttentionLayer(d, heads) for _ in range(intra_layers))
        self.inter = nn.ModuleList(AttentionLayer(d, heads) for _ in range(inter_layers))
        self.top_fusion = MaskedConcatFusion(c, m)

    def bottleneck(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, m = mask.shape
        size = tuple(x.shape[3:])
        t = tokens_of(self.to_tokens(x.flatten(1, 2)).unflatten(1, (m, -1)).flatten(0, 1))  # [B*M, N, D]
        n = t.shape[1]
        t = (t.unflatten(0, (b, m)) + self.position(size) + self.modality_embedding).flatten(0, 1)
        for layer in self.intra:
            t = layer(t)
        t = t.unflatten(0, (b, m)).flatten(1, 2)  # [B, M*N, D]
        allowed = mask.repeat_interleave(n, dim=1)[:, None, None, :]  # keys of available modalities only
        for layer in self.inter:
            t = layer(t, allowed)
        t = t.unflatten(1, (m, n)) * mask.to(t.dtype)[:, :, None, None]
        modal = grid_of(t.flatten(0, 1), size).unflatten(0, (b, m)).flatten(1, 2)  # [B, M*D, ...]
        modal = self.from_tokens(modal).unflatten(1, (m, -1)) * mask.to(t.dtype).view(b, m, 1, 1, 1, 1)
        return self.top_fusion(modal, mask), modal
