"""Accumulate: one optimiser step from the gradients of several batches."""

from __future__ import annotations

import torch

from prism.strategy import StepContext, Strategy


class Accumulate(Strategy):
    """Gradient accumulation: ``micro_batches`` batches, one optimiser step (a larger effective batch)."""

    def __init__(self, micro_batches: int = 2) -> None:
        if micro_batches < 1:
            raise ValueError(f"micro_batches must be >= 1, got {micro_batches}")
        self.micro_batches = micro_batches

    def step(self, ctx: StepContext) -> dict[str, torch.Tensor]:
        ctx.zero_grad()
        totals: dict[str, torch.Tensor] = {}
        for _ in range(self.micro_batches):
            batch = ctx.next_batch("train")  # masked by the configured masking.train policy
            loss, parts = ctx.compute_loss(batch)  # forward + configured losses, under autocast
            ctx.backward(loss / self.micro_batches)  # scaled under fp16
            for name, value in parts.items():
                totals[name] = totals.get(name, 0) + value / self.micro_batches
        ctx.optimizer_step()  # gradient sync across processes, unscaling, clipping, step
        return totals
