"""SegOutput: what a backbone returns, and the check that a backbone provides what the losses need."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch

from .errors import PluginError

#: The parts a backbone may provide and a loss may need.
PARTS: dict[str, str] = {
    "logits": "fused logits [B, K, D, H, W]",
    "deep": "fused logits at coarser decoder levels, finest first: list of [B, K, d, h, w]",
    "uni": "per-modality logits [B, M, K, D, H, W]",
    "uni_deep": "per-modality logits at coarser decoder levels: list of [B, M, K, d, h, w]",
    "features": "level-0 fused decoder features [B, C, D, H, W]",
    "uni_features": "level-0 per-modality decoder features [B, M, C, D, H, W]",
}


@dataclass
class SegOutput:
    """Output of a backbone. Only ``logits`` is required; eval mode may skip the optional parts."""

    logits: torch.Tensor
    deep: list[torch.Tensor] | None = None
    uni: torch.Tensor | None = None
    uni_deep: list[torch.Tensor] | None = None
    features: torch.Tensor | None = None
    uni_features: torch.Tensor | None = None

    def present(self) -> frozenset[str]:
        """Names of the parts this output actually holds."""
        return frozenset(p for p in PARTS if getattr(self, p) is not None)


def validate_parts(parts: Iterable[str], owner: str) -> frozenset[str]:
    """Check declared part names (for a backbone's ``provides`` or a loss's ``needs``)."""
    parts = frozenset(parts)
    unknown = sorted(parts - PARTS.keys())
    if unknown:
        raise PluginError(f"{owner} declares unknown SegOutput part(s) {unknown}; known: {sorted(PARTS)}")
    return parts


def check_provides_needs(backbone: str, provides: Iterable[str], loss: str, needs: Iterable[str]) -> None:
    """Raise a one-line PluginError when the backbone does not provide every part the loss needs."""
    missing = sorted(frozenset(needs) - frozenset(provides))
    if missing:
        raise PluginError(
            f"loss '{loss}' needs SegOutput part(s) {missing} that backbone '{backbone}' does not provide "
            f"(it provides {sorted(provides)})"
        )
