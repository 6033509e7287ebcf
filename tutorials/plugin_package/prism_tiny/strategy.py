"""Accumulate: one optimiser step from the gradients of several batches."""

from __future__ import annotations

from typing import Annotated, Any

import torch
from pydantic import Field

from prism.errors import ConfigError
from prism.strategy import StepContext, Strategy


class Accumulate(Strategy):
    """Gradient accumulation: ``micro_batches`` batches, one optimiser step (a larger effective batch)."""

    def __init__(self, *,
                 micro_batches: Annotated[int, Field(ge=1, le=64, description="batches per optimiser step")] = 2,
                 warmup: Annotated[int, Field(ge=0, description="steps with one batch each, before "
                                                                "accumulating")] = 0,
                 ) -> None:
        # Limits of one option: pydantic Field (checked before the strategy is built, one line, exit 2).
        # Rules joining several options: a ConfigError naming the option (one line, prism adds our name).
        if warmup and micro_batches == 1:
            raise ConfigError("strategy.options.warmup: only meaningful with micro_batches > 1")
        self.micro_batches, self.warmup = micro_batches, warmup
        self.steps_done = 0  # state: saved in checkpoints, so a resumed run continues exactly

    def step(self, ctx: StepContext) -> dict[str, torch.Tensor]:
        ctx.zero_grad()
        n = 1 if self.steps_done < self.warmup else self.micro_batches
        totals: dict[str, torch.Tensor] = {}
        for _ in range(n):
            batch = ctx.next_batch("train")  # masked by the configured masking.train policy
            loss, parts = ctx.compute_loss(batch)  # forward + configured losses, under autocast
            ctx.backward(loss / n)  # scaled under fp16
            for name, value in parts.items():
                totals[name] = totals.get(name, 0) + value / n
        ctx.optimizer_step()  # gradient sync across processes, unscaling, clipping, step
        self.steps_done += 1
        return totals  # detached scalar tensors by name; "loss" is required (the progress line shows it)

    def state_dict(self) -> dict[str, Any]:
        return {"steps_done": self.steps_done}  # tensors, numbers, text, lists, dicts: a weights-only checkpoint

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps_done = int(state.get("steps_done", 0))
