"""Masking policies: which modalities each training sample may use in a step.

Every policy returns a non-empty subset of each sample's availability (what exists on disk for the case), and
draws all randomness from the generator the engine passes in (checkpointed with the run).
"""

from __future__ import annotations

from typing import Annotated

import torch
from pydantic import Field

from prism.errors import ConfigError
from prism.masking import MaskingPolicy
from prism.modalities import combination_masks, display_name, enumerate_combinations


def _check_available(availability: torch.Tensor) -> torch.Tensor:
    availability = availability.cpu().bool()
    if not bool(availability.any(-1).all()):
        raise ValueError("a sample has no available modality")
    return availability


def _draw_allowed(combos: torch.Tensor, allowed: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Pick one allowed combination per row (uniformly): allowed [B, C] bool -> masks [B, M]."""
    choice = torch.multinomial(allowed.float(), 1, generator=generator).squeeze(1)
    return combos[choice]


class FullModalities(MaskingPolicy):
    """Every modality the case has (no dropping)."""

    def __call__(self, availability: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return _check_available(availability).clone()


class RandomCombination(MaskingPolicy):
    """A uniformly drawn non-empty combination per sample, among those the case has (PASSION's pdt)."""

    def __init__(self, modalities: tuple[str, ...]) -> None:
        super().__init__(modalities)
        self.combinations = combination_masks(modalities)  # [C, M]

    def __call__(self, availability: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        availability = _check_available(availability)
        combos = self.combinations
        allowed = ~(combos[None, :, :] & ~availability[:, None, :]).any(-1)  # [B, C]: uses only what exists
        return _draw_allowed(combos, allowed, generator)


class CaseAvailability(FullModalities):
    """utd (PASSION's idt): each case trains on its fixed available set (the cache's availability matrix)."""


class UtdDrop(MaskingPolicy):
    """utd_drop (PASSION's idt_drop): a random non-empty subset of the case's available modalities.

    ``per_batch=True`` draws one combination for the whole batch (among those every sample has, falling back
    per sample to its own availability where the batch shares none).
    """

    def __init__(self, modalities: tuple[str, ...], *, per_batch: Annotated[bool, Field(
            description="one combination for the whole batch (among those every sample has) instead of one per "
                        "sample")] = False) -> None:
        super().__init__(modalities)
        self.per_batch = per_batch
        self.combinations = combination_masks(modalities)

    def __call__(self, availability: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        availability = _check_available(availability)
        combos = self.combinations
        allowed = ~(combos[None, :, :] & ~availability[:, None, :]).any(-1)  # [B, C]
        if not self.per_batch:
            return _draw_allowed(combos, allowed, generator)
        shared = allowed.all(0, keepdim=True)
        if not bool(shared.any()):
            return _draw_allowed(combos, allowed, generator)
        return _draw_allowed(combos, shared, generator).expand(availability.shape[0], -1).clone()


class FixedCombination(MaskingPolicy):
    """One named combination for every sample, e.g. ``combination="flair+t1ce"`` (or its report index)."""

    def __init__(self, modalities: tuple[str, ...], *, combination: Annotated[str | Annotated[int, Field(ge=0)], Field(
            description="the modalities joined by '+' (e.g. 'flair+t1ce', display names accepted) or the "
                        "combination's index in the report order")]) -> None:
        super().__init__(modalities)
        combos = enumerate_combinations(modalities)
        if isinstance(combination, int):
            if not 0 <= combination < len(combos):
                raise ConfigError(f"fixed masking: combination index {combination} not in 0..{len(combos) - 1}")
            chosen = combos[combination]
        else:
            wanted = {p.strip().lower() for p in str(combination).replace(",", "+").split("+") if p.strip()}
            names = {m.lower(): m for m in modalities} | {display_name(m).lower(): m for m in modalities}
            unknown = sorted(wanted - names.keys())
            if unknown or not wanted:
                raise ConfigError(f"fixed masking: unknown modality {unknown or [combination]} in {combination!r}; "
                                  f"modalities: {', '.join(modalities)}")
            members = {names[w] for w in wanted}
            chosen = next(c for c in combos if set(c.members) == members)
        self.combination = chosen
        self.mask = torch.tensor(chosen.mask)

    def __call__(self, availability: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        availability = _check_available(availability)
        mask = self.mask[None, :] & availability
        if not bool(mask.any(-1).all()):
            raise ConfigError(f"fixed masking: a case has none of the modalities of the combination "
                              f"{self.combination.name}; choose a combination every training case has a part of")
        return mask
