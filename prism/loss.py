"""The LossTerm contract: a registered term reads a SegOutput and a Batch and returns a scalar and named parts."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from .batch import Batch
from .outputs import SegOutput


@dataclass
class LossResult:
    """A scalar loss and its named parts (detached, for logging)."""

    total: torch.Tensor
    parts: dict[str, torch.Tensor] = field(default_factory=dict)


class LossTerm:
    """Base class for registered loss terms. The maths lives in plain functions; a term adapts them.

    ``needs``: the SegOutput parts the term reads. Stateful terms (preference-aware regularisation) override
    ``state_dict``/``load_state_dict`` and ``on_epoch_end``.
    """

    needs: ClassVar[frozenset[str]] = frozenset({"logits"})

    def __init__(self, modalities: tuple[str, ...], num_classes: int) -> None:
        self.modalities = tuple(modalities)
        self.num_classes = int(num_classes)

    def __call__(self, output: SegOutput, batch: Batch) -> LossResult:  # pragma: no cover - abstract
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None

    def on_epoch_end(self) -> None:
        return None
