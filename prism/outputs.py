"""SegOutput: what a backbone returns, and the check that a backbone provides what the losses need.

Parts are named. Six *core* parts (``PARTS``) are fields of every SegOutput; a backbone may return *extra* parts
(RFNet's separate-decoder logits ``sep``, ShaSpec's ``shared`` features ...) as the fields of a SegOutput
subclass. A backbone declares every part it returns in ``provides`` and a loss term every part it reads in
``needs``, by the same names; ``prism.seams.check_provides_needs`` compares them before the first step.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from .errors import PluginError

#: The core parts: every SegOutput has these fields (only ``logits`` is required).
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
    """Output of a backbone. Only ``logits`` is required; eval mode may skip the optional parts.

    Extra parts: a backbone subclasses SegOutput (a dataclass) and adds fields, each a tensor, a list of tensors
    or None, and names them in its ``provides``. ``part(name)`` reads a core or an extra part by name;
    ``present()`` lists the parts this output holds.
    """

    logits: torch.Tensor
    deep: list[torch.Tensor] | None = None
    uni: torch.Tensor | None = None
    uni_deep: list[torch.Tensor] | None = None
    features: torch.Tensor | None = None
    uni_features: torch.Tensor | None = None

    def part_names(self) -> tuple[str, ...]:
        """Every part name this output type can hold: the core ones, then the subclass's extra fields."""
        return tuple(f.name for f in dataclasses.fields(self))

    def part(self, name: str) -> Any:
        """The part ``name`` (core or extra), or None when this output does not hold it.

        Args:
            name: a part name, e.g. ``"uni"`` or RFNet's ``"sep"``.
        Returns:
            The tensor (or list of tensors), or None.
        """
        return getattr(self, name, None) if name in self.part_names() else None

    def present(self) -> frozenset[str]:
        """Names of the parts this output actually holds (core and extra)."""
        return frozenset(p for p in self.part_names() if getattr(self, p) is not None)


#: Names a part may not take: SegOutput's own attributes.
RESERVED = frozenset(n for n in dir(SegOutput) if not n.startswith("_")) - PARTS.keys()


def validate_parts(parts: Iterable[str], owner: str) -> frozenset[str]:
    """Check declared part names (a backbone's ``provides`` or a loss's ``needs``): core names, or extra names
    that are Python identifiers and not SegOutput attributes.

    Raises:
        PluginError: a name that no SegOutput field could carry (one line, naming ``owner``).
    """
    parts = frozenset(parts)
    bad = sorted(p for p in parts if not isinstance(p, str) or not p.isidentifier() or p.startswith("_")
                 or p in RESERVED)
    if bad:
        raise PluginError(f"{owner} declares invalid SegOutput part name(s) {bad}: a part is a core part "
                          f"({', '.join(PARTS)}) or an identifier naming a field of the backbone's SegOutput "
                          f"subclass (not one of {sorted(RESERVED)})")
    return parts


def split_parts(parts: Iterable[str]) -> tuple[list[str], list[str]]:
    """``(core, extra)`` part names, each sorted (core in ``PARTS`` order), e.g. for ``prism-plugins``."""
    parts = frozenset(parts)
    return [p for p in PARTS if p in parts], sorted(parts - PARTS.keys())


def providers(needs: Iterable[str], candidates: Mapping[str, Iterable[str]]) -> list[str]:
    """Names of the ``candidates`` (backbone name -> provides) that provide every part of ``needs``, sorted."""
    needs = frozenset(needs)
    return sorted(name for name, provides in candidates.items() if needs <= frozenset(provides))
