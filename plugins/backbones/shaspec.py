"""ShaSpec: one shared encoder and modality-specific encoders, residual fusion, missing modalities substituted.

Shared-Specific Feature Modelling (Wang et al., CVPR 2023), rebuilt at U-Net scale on the SegOutput contract.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from prism.backbone import Backbone
from prism.outputs import SegOutput

from .blocks import GroupedResidualEncoder, SharedDecoder, conv_norm_act, masked_mean, zero_missing
from .options import Depth, Width


def substitute_missing(per_modality: torch.Tensor, substitute: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Keep ``per_modality`` ``[B, M, C, ...]`` where the mask ``[B, M]`` is True, else ``substitute`` ``[B, C, ...]``.

    A ``torch.where`` on the device: no host synchronisation, no Python branching on the mask.
    """
    keep = mask.view(*mask.shape, *([1] * (per_modality.dim() - 2)))
    return torch.where(keep, per_modality, substitute.unsqueeze(1))


class ResidualComposition(nn.Module):
    """ShaSpec's residual fusion ``f = r + proj([r, s])`` for shared ``r`` and specific ``s`` features.

    One projection (a 3x3x3 convolution from 2C to C channels) serves every modality: the M modalities run
    stacked along the batch in one call.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.proj = nn.Conv3d(2 * channels, channels, 3, padding=1, bias=False)

    def forward(self, shared: torch.Tensor, specific: torch.Tensor) -> torch.Tensor:
        """``shared``, ``specific``: ``[B, M, C, ...]`` -> fused ``[B, M, C, ...]``."""
        b, m = shared.shape[:2]
        pair = torch.cat([shared, specific], dim=2).flatten(0, 1)  # [B * M, 2C, ...]
        return shared + self.proj(pair).unflatten(0, (b, m))


@dataclass
class ShaSpecOutput(SegOutput):
    """SegOutput plus ShaSpec's bottleneck features and domain logits (read by ``shaspec_*`` loss terms).

    ``shared``: shared-encoder bottleneck features ``[B, M, C, d, h, w]`` (term ``shaspec_consistency``).
    ``fused``: per-modality fused bottleneck features ``[B, M, C, d, h, w]``; a missing modality's entry is the
    mean of the available modalities' ``shared`` entries. ``domain_logits``: ``[B, M, M]``, for each modality's
    specific features the logits over the backbone's modalities, in the order of its ``modalities``
    (term ``shaspec_domain``).
    """

    shared: torch.Tensor | None = None
    fused: torch.Tensor | None = None
    domain_logits: torch.Tensor | None = None


class ShaSpec(Backbone):
    """Shared-Specific Feature Modelling (Wang et al., CVPR 2023) on the SegOutput contract.

    * A shared encoder (one set of weights) runs on every modality, the M modalities stacked along the batch;
      M modality-specific encoders run as one grouped convolution. Missing inputs are zeroed first.
    * At the bottleneck each available modality's shared and specific features are fused residually,
      ``f = r + proj([r, s])``; a missing modality's fused features are the mean of the available modalities'
      shared features (the paper's rule; the authors' code takes the first available modality instead).
    * Skip levels carry only shared features; a missing modality's are replaced by the same mean.
    * Per level, the M modality features are concatenated and reduced by a 1x1 convolution; one U-Net decoder
      with a head per level gives ``logits`` and ``deep`` (coarser levels, finest first) and ``features``.
    * A linear domain classifier reads each modality's globally pooled specific bottleneck features
      (``domain_logits``, classes = the modality names given to the constructor, in that order).

    Options: ``width`` (channels at level 0, doubling per level), ``depth`` (levels).
    """

    provides = frozenset({"logits", "deep", "features", "shared", "fused", "domain_logits"})
    head_patterns = ("decoder.heads.*",)

    def __init__(self, modalities: tuple[str, ...], num_classes: int, *, width: Width = 8, depth: Depth = 4) -> None:
        super().__init__(modalities, num_classes)
        m = self.num_modalities
        self.size_divisor = 2 ** (depth - 1)
        self.shared_encoder = GroupedResidualEncoder(1, width, depth)
        self.specific_encoder = GroupedResidualEncoder(m, width, depth)
        chans = self.shared_encoder.channels
        self.compose = ResidualComposition(chans[-1])
        self.merge = nn.ModuleList(conv_norm_act(m * c, c, 1) for c in chans)
        self.decoder = SharedDecoder(chans, num_classes, deep_heads=True)
        self.domain_classifier = nn.Linear(chans[-1], m)

    @property
    def extra_loss_terms(self) -> tuple[str, ...]:
        """Registered terms for this backbone's own outputs (ShaSpec's auxiliary objectives)."""
        return ("shaspec_domain", "shaspec_consistency")

    def forward(self, image: torch.Tensor, mask: torch.Tensor) -> ShaSpecOutput:
        self.check_input(image, mask)
        b, m = mask.shape
        mask = mask.to(image.device)
        image = zero_missing(image, mask)
        # shared encoder: the modalities stacked along the batch (modality-minor: [B * M, 1, ...])
        shared_levels = [f.view(b, m, *f.shape[2:]) for f in self.shared_encoder(image.flatten(0, 1).unsqueeze(1))]
        specific = self.specific_encoder(image)[-1]  # [B, M, C, ...]: only the bottleneck is used
        shared = shared_levels[-1]
        fused = substitute_missing(self.compose(shared, specific), masked_mean(shared, mask), mask)
        per_level = [substitute_missing(f, masked_mean(f, mask), mask) for f in shared_levels[:-1]] + [fused]
        merged = [merge(f.flatten(1, 2)) for merge, f in zip(self.merge, per_level, strict=True)]
        logits, features = self.decoder(merged, with_deep=True)
        domain_logits = self.domain_classifier(specific.flatten(3).mean(-1))  # [B, M, M]
        return ShaSpecOutput(logits=logits[0], deep=logits[1:], features=features, shared=shared, fused=fused,
                             domain_logits=domain_logits)
