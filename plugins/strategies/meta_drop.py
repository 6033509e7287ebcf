"""Meta-Drop: an inner step on a training batch, then a meta step on a batch drawn under another masking policy."""

from __future__ import annotations

from typing import Any

import torch

from prism.engine.context import TrainContext
from prism.loss import observation
from prism.registry import create_masking_policy
from prism.strategy import Strategy


class MetaDrop(Strategy):
    """phi <- phi_0 + alpha (phi_tilde - phi_0) - eta_meta * grad_{phi_tilde} L_meta (the seeds' update).

    The inner step is the configured optimizer's step on a ``train`` batch (train masking policy), giving
    phi_tilde. The meta loss is taken at phi_tilde on a ``meta`` batch drawn under the masking role ``meta``
    (``masking.extra.meta`` in the config, else the policy named by ``meta_masking``, default ``full``).

    Choices: the optimizer's moments are updated by the inner step only (the meta correction is a plain gradient
    step of size ``meta_lr``, which follows the LR schedule as a fraction ``meta_lr_scale`` of the current
    learning rate when ``meta_lr`` is not given); normalisation layers see both batches in train mode (the
    built-in backbones use instance norm, which keeps no running statistics).
    """

    def __init__(self, *, alpha: float = 1.0, meta_lr: float | None = None, meta_lr_scale: float = 1.0,
                 meta_masking: str = "full") -> None:
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        self.alpha = float(alpha)
        self.meta_lr = meta_lr
        self.meta_lr_scale = float(meta_lr_scale)
        self.meta_masking = meta_masking

    def setup(self, ctx: TrainContext) -> None:
        if "meta" not in ctx.masking:
            ctx.masking["meta"] = create_masking_policy(self.meta_masking, ctx.model.modalities)

    def step(self, ctx: TrainContext) -> dict[str, torch.Tensor]:
        params = ctx.parameters()
        phi0 = torch._foreach_mul(params, 1.0) if self.alpha != 1.0 else None  # detached copy, one fused op
        # inner step: phi_tilde
        batch = ctx.next_batch("train")
        ctx.optimizer.zero_grad(set_to_none=True)
        loss, parts = ctx.compute_loss(batch)
        ctx.backward(loss)
        ctx.optimizer_step()
        # meta gradient at phi_tilde
        meta_batch = ctx.next_batch("meta", policy="meta")
        ctx.optimizer.zero_grad(set_to_none=False)
        with observation(False):  # epoch statistics come from training batches only
            meta_loss, meta_parts = ctx.compute_loss(meta_batch)
        ctx.backward(meta_loss)
        grads = ctx.unscaled_clipped_grads(params)
        eta = self.meta_lr if self.meta_lr is not None else self.meta_lr_scale * ctx.optimizer.param_groups[0]["lr"]
        with torch.no_grad():
            if self.alpha != 1.0:  # phi_0 + alpha (phi_tilde - phi_0)
                torch._foreach_lerp_(params, phi0, 1.0 - self.alpha)
            if grads is not None:  # - eta grad L_meta(phi_tilde); None: fp16 overflow, skip this correction
                torch._foreach_add_(params, grads, alpha=-eta)
        ctx.optimizer.zero_grad(set_to_none=True)
        return {**parts, **{f"meta.{k}": v for k, v in meta_parts.items()}}

    def state_dict(self) -> dict[str, Any]:
        return {}
