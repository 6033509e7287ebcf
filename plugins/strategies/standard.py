"""Standard training: one batch, one gradient step."""

from __future__ import annotations

import torch

from prism.strategy import StepContext, Strategy


class Standard(Strategy):
    """Plain supervised training under the training masking policy."""

    gradient_sync = "ddp"

    def step(self, ctx: StepContext) -> dict[str, torch.Tensor]:
        batch = ctx.next_batch("train")
        ctx.zero_grad()
        loss, parts = ctx.compute_loss(batch)
        ctx.backward(loss)
        ctx.optimizer_step()
        return parts
