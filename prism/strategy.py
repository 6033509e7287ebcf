"""The Strategy contract: one optimisation step, owning how gradients are computed and applied."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from .engine.context import TrainContext


class Strategy:
    """Base class for meta-strategies. Standard training is the trivial one.

    ``setup(ctx)`` runs once before the first step (build extra optimizers, check compatibility);
    ``step(ctx)`` pulls the batches it needs from ``ctx``, updates the parameters and returns detached losses.
    ``uses_optimizer = False`` tells the engine that the configured optimizer (and its LR schedule) is unused.
    """

    uses_optimizer: bool = True
    #: why ``train.compile=true`` is refused with this strategy (None: compiling the model is fine)
    compile_refusal: str | None = None

    def setup(self, ctx: TrainContext) -> None:
        return None

    def step(self, ctx: TrainContext) -> dict[str, torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None
