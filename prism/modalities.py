"""Modality names, availability masks and the 15 (2^M - 1) non-empty modality combinations.

A dataset declares its modality names in order; a mask is a bool tensor ``[B, M]`` (True = available).
For the BraTS modalities the combinations follow the report order used by PASSION (see ``BRATS_REPORT_ORDER``),
whatever order the dataset stores its channels in; any other modality set uses a generic order
(fewer modalities first, then by declared order).
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations as _subsets

import torch

BRATS_MODALITIES: tuple[str, ...] = ("flair", "t1ce", "t1", "t2")

#: PASSION's combination index order (its ``pos_mask_ids``): index -> member modalities.
BRATS_REPORT_ORDER: tuple[frozenset[str], ...] = tuple(
    frozenset(members)
    for members in (
        ("t2",), ("t1ce",), ("t1",), ("flair",),
        ("t1ce", "t2"), ("t1ce", "t1"), ("flair", "t1"), ("t1", "t2"), ("flair", "t2"), ("flair", "t1ce"),
        ("flair", "t1ce", "t1"), ("flair", "t1", "t2"), ("flair", "t1ce", "t2"), ("t1ce", "t1", "t2"),
        ("flair", "t1ce", "t1", "t2"),
    )
)

_DISPLAY = {"flair": "FLAIR", "t1ce": "T1ce", "t1": "T1", "t2": "T2"}


def display_name(modality: str) -> str:
    """Human-readable name of a modality (``t1ce`` -> ``T1ce``); unknown names are returned unchanged."""
    return _DISPLAY.get(modality, modality)


@dataclass(frozen=True)
class Combination:
    """One non-empty subset of a dataset's modalities, at its index in the report order."""

    index: int
    members: tuple[str, ...]  # in the dataset's declared channel order
    mask: tuple[bool, ...]  # aligned with the dataset's modality order

    @property
    def name(self) -> str:
        return "+".join(display_name(m) for m in self.members)


def validate_modalities(modalities: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """Check a modality name list (non-empty, unique, lower-case identifiers) and return it as a tuple."""
    names = tuple(modalities)
    if not names:
        raise ValueError("a dataset needs at least one modality")
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate modality names in {list(names)}")
    return names


def enumerate_combinations(modalities: tuple[str, ...] | list[str]) -> list[Combination]:
    """All non-empty combinations of ``modalities`` in report order (PASSION's for the BraTS set)."""
    names = validate_modalities(modalities)
    if set(names) == set(BRATS_MODALITIES):
        ordered = [tuple(m for m in names if m in members) for members in BRATS_REPORT_ORDER]
    else:
        ordered = [subset for k in range(1, len(names) + 1) for subset in _subsets(names, k)]
    return [
        Combination(index=i, members=members, mask=tuple(m in members for m in names))
        for i, members in enumerate(ordered)
    ]


def combination_masks(modalities: tuple[str, ...] | list[str],
                      device: torch.device | str | None = None) -> torch.Tensor:
    """Bool tensor ``[C, M]``: row ``c`` is the mask of combination ``c`` in report order."""
    combos = enumerate_combinations(modalities)
    return torch.tensor([c.mask for c in combos], dtype=torch.bool, device=device)


def combination_index(modalities: tuple[str, ...] | list[str], mask: torch.Tensor | list[bool]) -> int:
    """Report-order index of the combination given by one mask ``[M]``."""
    key = tuple(bool(v) for v in (mask.tolist() if isinstance(mask, torch.Tensor) else mask))
    for combo in enumerate_combinations(modalities):
        if combo.mask == key:
            return combo.index
    raise ValueError(f"mask {list(key)} is empty or does not match {len(modalities)} modalities")
