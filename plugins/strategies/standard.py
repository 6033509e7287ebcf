"""Standard training: one batch, one gradient step."""

from __future__ import annotations

import torch

from prism.strategy import StepContext, Strategy


class Standard(Strategy):
    """Plain supervised training under the training masking policy (``train.accumulate`` batches per step)."""

    gradient_sync = "ddp"
    accumulates = True

    def step(self, ctx: StepContext) -> dict[str, torch.Tensor]:
        ctx.zero_grad()
        parts = ctx.accumulate_gradients("train")  # next_batch, compute_loss, backward (per accumulated batch)
        ctx.optimizer_step()
        return parts
