"""A weighted sum of registered loss terms, with every named part kept for logging."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..batch import Batch
from ..loss import LossTerm, clear_step_cache
from ..outputs import SegOutput


@dataclass
class WeightedTerm:
    name: str
    weight: float
    term: LossTerm


class LossSet:
    """``total = sum_i weight_i * term_i``; parts are named ``<part>`` (the term's own names)."""

    def __init__(self, terms: list[WeightedTerm]) -> None:
        if not terms:
            raise ValueError("LossSet needs at least one term")
        self.terms = terms

    @property
    def needs(self) -> frozenset[str]:
        return frozenset().union(*(t.term.needs for t in self.terms))

    def __call__(self, output: SegOutput, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        total: torch.Tensor | None = None
        parts: dict[str, torch.Tensor] = {}
        clear_step_cache(batch)  # the terms share one-hot labels within this evaluation, never across them
        for t in self.terms:
            result = t.term(output, batch)
            value = result.total * t.weight
            total = value if total is None else total + value
            for key, part in result.parts.items():
                parts[key if key not in parts else f"{t.name}.{key}"] = part
        assert total is not None
        parts["loss"] = total.detach()
        return total, parts

    def state_dict(self) -> list[dict[str, Any]]:
        return [t.term.state_dict() for t in self.terms]

    def load_state_dict(self, states: list[dict[str, Any]]) -> None:
        for t, s in zip(self.terms, states, strict=True):
            t.term.load_state_dict(s)

    def on_epoch_end(self) -> None:
        for t in self.terms:
            t.term.on_epoch_end()
