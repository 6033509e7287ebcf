"""DropOne: every available modality but one, drawn at random (cases with one modality keep it)."""

from __future__ import annotations

import torch

from prism.masking import MaskingPolicy


class DropOne(MaskingPolicy):
    """All of a case's available modalities except one, drawn uniformly; a case with one keeps it."""

    def __call__(self, availability: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        availability = availability.cpu().bool()  # [B, M]
        mask = availability.clone()
        for row in range(mask.shape[0]):
            present = availability[row].nonzero().flatten()
            if len(present) > 1:  # the result must stay a non-empty subset of the availability
                drop = present[torch.randint(len(present), (1,), generator=generator)]
                mask[row, drop] = False
        return mask
