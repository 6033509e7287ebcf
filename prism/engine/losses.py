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
    """``total = sum_i weight_i * term_i``; parts are named ``<part>`` (the term's own names).

    Besides the terms' parts, each call returns ``loss`` (the total) and ``share.<piece>``: each piece's weighted
    contribution divided by the total (detached device tensors, no host read), where the pieces are a term's
    ``LossResult.contributions`` (the ``prism`` term: ``fuse``, ``prm``, ``pixel_kl`` ...) or the term itself.
    A term that owns tensors (fixed weights, preference coefficients) moves them in ``to(device)``, which the
    trainer calls once before the first step, so that no step creates or moves state.
    """

    def __init__(self, terms: list[WeightedTerm]) -> None:
        if not terms:
            raise ValueError("LossSet needs at least one term")
        self.terms = terms

    @property
    def needs(self) -> frozenset[str]:
        return frozenset().union(*(t.term.needs for t in self.terms))

    def epoch_scheduled(self) -> list[str]:
        """Names of the terms that change at epoch ends (``epoch_schedule``: the preference coefficients)."""
        return [t.name for t in self.terms if getattr(t.term, "epoch_schedule", False)]

    def to(self, device: torch.device | str) -> LossSet:
        """Move every term's tensors to ``device`` (terms with a ``to`` method); returns self."""
        for t in self.terms:
            move = getattr(t.term, "to", None)
            if callable(move):
                move(device)
        return self

    def __call__(self, output: SegOutput, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        total: torch.Tensor | None = None
        parts: dict[str, torch.Tensor] = {}
        pieces: dict[str, torch.Tensor] = {}
        clear_step_cache(batch)  # the terms share one-hot labels within this evaluation, never across them
        for t in self.terms:
            result = t.term(output, batch)
            value = result.total * t.weight
            total = value if total is None else total + value
            for key, part in result.parts.items():
                parts[key if key not in parts else f"{t.name}.{key}"] = part
            own = result.contributions or {t.name: result.total.detach()}
            for key, piece in own.items():
                pieces[key if key not in pieces else f"{t.name}.{key}"] = piece if t.weight == 1 else piece * t.weight
        assert total is not None
        parts["loss"] = total.detach()
        parts.update(shares(pieces, parts["loss"]))
        return total, parts

    def state_dict(self) -> list[dict[str, Any]]:
        return [t.term.state_dict() for t in self.terms]

    def load_state_dict(self, states: list[dict[str, Any]]) -> None:
        for t, s in zip(self.terms, states, strict=True):
            t.term.load_state_dict(s)

    def on_epoch_end(self) -> None:
        for t in self.terms:
            t.term.on_epoch_end()


def shares(pieces: dict[str, torch.Tensor], total: torch.Tensor) -> dict[str, torch.Tensor]:
    """``{"share.<name>": piece / total}``, computed in one division on the device (no host read).

    Args:
        pieces: weighted contributions (scalars) that sum to ``total``; total: the loss (scalar).
    Returns:
        One detached scalar per piece (0 for a zero piece of a zero total: 1e-30 is added to the total).
    """
    if not pieces:
        return {}
    stacked = torch.stack([p.detach().float().reshape(()) for p in pieces.values()])
    values = stacked / (total.detach().float() + 1e-30)
    return {f"share.{name}": values[i] for i, name in enumerate(pieces)}
