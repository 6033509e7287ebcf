"""Reptile: k inner steps per task from theta, then theta <- theta + eps (mean_i W_i - theta)."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Annotated, Any, Literal

import torch
from pydantic import Field

from prism.adapt import AdaptLossFn, OptimizerFactory, fine_tune, select_parameters
from prism.backbone import Backbone
from prism.batch import Batch
from prism.errors import ConfigError
from prism.strategy import StepContext, Strategy

from .options import AdaptParams, InnerLR, InnerSteps, SiteOrCombination, TasksPerStep
from .tasks import TaskSampler


class Reptile(Strategy):
    """Reptile with the meta step size eps annealed linearly from ``meta_step`` to ``meta_step_final``.

    Each task runs ``inner_steps`` steps of a fresh inner optimizer (``sgd``, or ``adam`` with beta1 = 0 as in
    the Reptile paper) on successive support batches of that task. The configured outer optimizer is not used
    for the meta update (Reptile's update is an interpolation); its LR schedule is ignored.

    ``adapt_params`` (``all``, ``head``, ``body`` or glob patterns) chooses the parameters the inner optimizer
    updates, in training and in ``adapt``, which runs the same inner optimizer for ``inner_steps`` steps on a
    copy of the model.
    """

    uses_optimizer = False

    def __init__(
        self, *, inner_steps: InnerSteps = 3, inner_lr: InnerLR = 1e-3, tasks_per_step: TasksPerStep = 1,
        meta_step: Annotated[float, Field(ge=0, le=1, description="eps at the first step: the share of the way "
                                                                  "towards the adapted weights")] = 1.0,
        meta_step_final: Annotated[float, Field(ge=0, le=1, description="eps at the last step (linear in between; "
                                                                        "at most meta_step)")] = 0.0,
        inner_optimizer: Annotated[Literal["sgd", "adam"], Field(
            description="the inner loop's optimizer (adam with beta1 = 0, as in the Reptile paper)")] = "adam",
        tasks: SiteOrCombination = "combination",
        adapt_params: AdaptParams = "all",
    ) -> None:
        if meta_step_final > meta_step:
            raise ConfigError(f"strategy.options.meta_step_final: {meta_step_final} must not exceed meta_step "
                              f"{meta_step}")
        self.inner_steps = int(inner_steps)
        self.inner_lr = float(inner_lr)
        self.tasks_per_step = int(tasks_per_step)
        self.meta_step = float(meta_step)
        self.meta_step_final = float(meta_step_final)
        self.inner_optimizer = inner_optimizer
        self.task_kind = tasks
        self.adapt_params = adapt_params
        self.adapted: list[str] = []
        self.sampler: TaskSampler | None = None
        self.generator = torch.Generator().manual_seed(0)

    def setup(self, ctx: StepContext) -> None:
        self.adapted = select_parameters(ctx.model, self.adapt_params, field="strategy.options.adapt_params")
        self.sampler = TaskSampler(ctx, self.task_kind)
        self.generator.manual_seed(int(torch.randint(2**62, (1,), generator=ctx.generator)))

    def epsilon(self, step: int, total: int) -> float:
        frac = min(step / max(total, 1), 1.0)
        return self.meta_step + (self.meta_step_final - self.meta_step) * frac

    def _inner_optimizer(self) -> OptimizerFactory:
        """``factory(params, lr)`` of the inner optimizer: SGD, or Adam with beta1 = 0."""
        if self.inner_optimizer == "adam":
            return functools.partial(torch.optim.Adam, betas=(0.0, 0.999))
        return torch.optim.SGD

    def step(self, ctx: StepContext) -> dict[str, torch.Tensor]:
        assert self.sampler is not None
        params = ctx.parameters()
        theta = torch._foreach_mul(params, 1.0)
        mean_w = [torch.zeros_like(p) for p in params]
        losses = []
        for _ in range(self.tasks_per_step):
            task = self.sampler.sample(self.generator)
            with torch.no_grad():
                torch._foreach_copy_(params, theta)
            own = dict(ctx.model.named_parameters())
            inner = self._inner_optimizer()([own[n] for n in self.adapted], self.inner_lr)
            for _ in range(self.inner_steps):
                batch = self.sampler.batch(ctx, task, task.support_stream)
                inner.zero_grad(set_to_none=True)
                loss, _ = ctx.compute_loss(batch)
                ctx.backward(loss)
                ctx.optimizer_step(inner)
                losses.append(loss.detach())
            with torch.no_grad():
                torch._foreach_add_(mean_w, params, alpha=1.0 / self.tasks_per_step)
        eps = self.epsilon(ctx.step, ctx.total_steps)
        with torch.no_grad():  # theta + eps (mean W - theta)
            torch._foreach_lerp_(theta, mean_w, eps)
            torch._foreach_copy_(params, theta)
        for p in params:
            p.grad = None
        mean_loss = torch.stack(losses).mean()
        return {"loss": mean_loss, "inner": mean_loss, "epsilon": torch.tensor(eps)}

    def adapt(self, model: Backbone, support: Sequence[Batch], loss_fn: AdaptLossFn, *, steps: int | None = None,
              lr: float | None = None) -> dict[str, torch.Tensor]:
        """The inner optimizer (``inner_optimizer``, ``inner_lr`` or ``lr``) for ``inner_steps`` (or ``steps``)
        steps on ``adapt_params`` (:func:`prism.adapt.fine_tune` with that optimizer; ``model`` unchanged)."""
        names = select_parameters(model, self.adapt_params, field="strategy.options.adapt_params")
        return fine_tune(model, support, loss_fn, steps=self.inner_steps if steps is None else steps,
                         lr=self.inner_lr if lr is None else lr, params=names, optimizer=self._inner_optimizer())

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "generator" in state:
            self.generator.set_state(state["generator"])
