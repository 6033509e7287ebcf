"""Meta-Drop: an inner step on a training batch, then a meta step on a batch drawn under another masking policy."""

from __future__ import annotations

from typing import Annotated, Any

import torch
from pydantic import Field

from prism.errors import ConfigError
from prism.loss import observation
from prism.registry import create_masking_policy
from prism.strategy import StepContext, Strategy


class MetaDrop(Strategy):
    """phi <- phi_0 + alpha (phi_tilde - phi_0) - eta_meta * grad_{phi_tilde} L_meta (the seeds' update).

    The inner step is the configured optimizer's step on a ``train`` batch (train masking policy), giving
    phi_tilde. The meta loss is taken at phi_tilde on a ``meta`` batch drawn under the masking role ``meta``:
    ``masking.extra.meta`` in the config, or else the policy named by the option ``meta_masking`` (default
    ``full``). Setting both is an error.

    With ``train.accumulate`` N, the inner step and the meta gradient each come from N batches (the gradients of
    the mean loss over N times the batch).

    Choices: the optimizer's moments are updated by the inner step only (the meta correction is a plain gradient
    step of size ``meta_lr``, which follows the LR schedule as a fraction ``meta_lr_scale`` of the current
    learning rate when ``meta_lr`` is not given); normalisation layers see both batches in train mode.
    """

    gradient_sync = "ddp"
    accumulates = True

    def __init__(
        self, *,
        alpha: Annotated[float, Field(ge=0, le=1, description="interpolation towards the inner step's result "
                                                              "(1: keep phi_tilde)")] = 1.0,
        meta_lr: Annotated[Annotated[float, Field(gt=0)] | None, Field(
            description="fixed step size of the meta correction (None: meta_lr_scale times the current learning "
                        "rate, following the schedule)")] = None,
        meta_lr_scale: Annotated[float, Field(ge=0, description="fraction of the current learning rate the meta "
                                                                "correction takes when meta_lr is None")] = 1.0,
        meta_masking: Annotated[str | None, Field(
            description="registered masking policy of the meta batch when masking.extra.meta is not configured "
                        "(None: full)")] = None,
    ) -> None:
        self.alpha = float(alpha)
        self.meta_lr = meta_lr
        self.meta_lr_scale = float(meta_lr_scale)
        self.meta_masking = meta_masking

    def setup(self, ctx: StepContext) -> None:
        if "meta" in ctx.masking_roles():
            if self.meta_masking is not None:
                raise ConfigError("strategy.options.meta_masking: conflicts with masking.extra.meta; set only one "
                                  "(masking.extra.meta also takes the policy's options)")
            return
        ctx.add_masking_policy("meta", create_masking_policy(self.meta_masking or "full", ctx.model.modalities))

    def step(self, ctx: StepContext) -> dict[str, torch.Tensor]:
        params = ctx.parameters()
        phi0 = torch._foreach_mul(params, 1.0) if self.alpha != 1.0 else None  # detached copy, one fused op
        # inner step: phi_tilde (from train.accumulate training batches)
        ctx.zero_grad()
        parts = ctx.accumulate_gradients("train")
        ctx.optimizer_step()
        # meta gradient at phi_tilde (from as many meta batches)
        ctx.zero_grad(set_to_none=False)
        with observation(False):  # epoch statistics come from training batches only
            meta_parts = ctx.accumulate_gradients("meta", policy="meta")
        grads = ctx.unscaled_clipped_grads(params)
        eta = self.meta_lr if self.meta_lr is not None else self.meta_lr_scale * ctx.learning_rate()
        with torch.no_grad():
            if phi0 is not None:  # phi_0 + alpha (phi_tilde - phi_0)
                torch._foreach_lerp_(params, phi0, 1.0 - self.alpha)
            if grads is not None:  # - eta grad L_meta(phi_tilde); None: fp16 overflow, skip this correction
                torch._foreach_add_(params, grads, alpha=-eta)
        ctx.zero_grad()
        return {**parts, **{f"meta.{k}": v for k, v in meta_parts.items()}}

    def state_dict(self) -> dict[str, Any]:
        return {}
