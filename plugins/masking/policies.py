"""Masking policies: which modalities each training sample may use in a step."""

from __future__ import annotations

import torch

from prism.masking import MaskingPolicy
from prism.modalities import combination_masks


class RandomCombination(MaskingPolicy):
    """A uniformly drawn non-empty combination per sample, among those the case has (PASSION's pdt)."""

    def __init__(self, modalities: tuple[str, ...]) -> None:
        super().__init__(modalities)
        self.combinations = combination_masks(modalities)  # [C, M]

    def __call__(self, availability: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        availability = availability.cpu()
        combos = self.combinations
        # a combination is allowed for a sample when it uses only modalities the case has
        allowed = ~(combos[None, :, :] & ~availability[:, None, :]).any(-1)  # [B, C]
        if not bool(allowed.any(-1).all()):
            raise ValueError("a sample has no available modality")
        choice = torch.multinomial(allowed.float(), 1, generator=generator).squeeze(1)
        return combos[choice]
