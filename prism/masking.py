"""The MaskingPolicy contract: which modalities a training sample may use in this step."""

from __future__ import annotations

from typing import Any

import torch


class MaskingPolicy:
    """Base class. ``__call__(availability [B, M] bool, generator) -> mask [B, M] bool``.

    The returned mask must be a non-empty subset of each row of ``availability``. All randomness comes from
    ``generator`` (checkpointed by the engine); policies with their own state override ``state_dict``.
    """

    def __init__(self, modalities: tuple[str, ...]) -> None:
        self.modalities = tuple(modalities)

    def __call__(self, availability: torch.Tensor, generator: torch.Generator) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None
