"""Standard training: one batch, one gradient step."""

from __future__ import annotations

import torch

from prism.engine.context import TrainContext
from prism.strategy import Strategy


class Standard(Strategy):
    """Plain supervised training under the training masking policy."""

    def step(self, ctx: TrainContext) -> dict[str, torch.Tensor]:
        batch = ctx.next_batch("train")
        ctx.optimizer.zero_grad(set_to_none=True)
        loss, parts = ctx.compute_loss(batch)
        ctx.backward(loss)
        ctx.optimizer_step()
        return parts
