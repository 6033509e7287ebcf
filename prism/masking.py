"""The MaskingPolicy contract: which modalities a training sample may use in this step."""

from __future__ import annotations

from typing import Any

import torch


class MaskingPolicy:
    """Base class. ``__call__(availability [B, M] bool, generator) -> mask [B, M] bool``.

    The returned mask must be a bool tensor of ``availability``'s shape and a non-empty subset of each of its rows
    (the engine checks every mask it draws: ``prism.seams.check_mask``); ``availability`` is not changed. All
    randomness comes from ``generator`` (checkpointed by the engine). Policies with state of their own (a
    curriculum's position) override ``state_dict() -> dict`` and ``load_state_dict(state)``; the state holds only
    what a weights-only checkpoint stores (tensors, numbers, text, lists, dicts).

    Args:
        modalities: the dataset's modality names, in channel order.
    """

    def __init__(self, modalities: tuple[str, ...]) -> None:
        self.modalities = tuple(modalities)

    def __call__(self, availability: torch.Tensor, generator: torch.Generator) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """The policy's own state (none by default)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (on resume, before the first step)."""
        return None
