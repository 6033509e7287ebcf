"""MAML (and first-order MAML, Meta-SGD) over modality-combination or site tasks, with three backends."""

from __future__ import annotations

from typing import Any, Literal

import torch

from prism.engine.context import TrainContext
from prism.errors import ConfigError
from prism.strategy import Strategy

from .maml_backends import InnerLoop, make_inner_loop
from .tasks import TaskSampler


class MAML(Strategy):
    """phi_i = theta - a grad L_support(theta) (K steps); theta <- outer optimizer step on sum_i L_query(phi_i).

    Options: ``inner_steps`` K, ``inner_lr`` a, ``learn_inner_lr`` (Meta-SGD), ``first_order``,
    ``tasks_per_step``, ``tasks`` ("combination": one modality combination per task, support and query from
    disjoint cases; "site": one site per task), ``backend`` ("torch" = torch.func, "higher", "learn2learn").
    The outer step is the configured optimizer (``optim``) with its schedule and gradient clipping.
    """

    compile_refusal = ("torch.compile around a functional_call inner loop silently uses the original weights, so "
                       "the adapted parameters would be ignored")

    def __init__(self, *, inner_steps: int = 1, inner_lr: float = 0.01, learn_inner_lr: bool = False,
                 first_order: bool = True, tasks_per_step: int = 2,
                 tasks: Literal["combination", "site"] = "combination",
                 backend: Literal["torch", "higher", "learn2learn"] = "torch") -> None:
        if inner_steps < 1 or tasks_per_step < 1 or inner_lr <= 0:
            raise ConfigError("strategy.options: inner_steps and tasks_per_step must be >= 1 and inner_lr > 0")
        self.inner_steps = int(inner_steps)
        self.inner_lr = float(inner_lr)
        self.learn_inner_lr = bool(learn_inner_lr)
        self.first_order = bool(first_order)
        self.tasks_per_step = int(tasks_per_step)
        self.task_kind = tasks
        self.backend = backend
        self.inner: InnerLoop | None = None
        self.sampler: TaskSampler | None = None
        self.generator = torch.Generator().manual_seed(0)

    def setup(self, ctx: TrainContext) -> None:
        scaler = ctx.scaler
        self.inner = make_inner_loop(
            self.backend, ctx.model, inner_lr=self.inner_lr, learn_inner_lr=self.learn_inner_lr,
            first_order=self.first_order, loss_scale=(lambda: float(scaler.get_scale())) if scaler else None,
            prepare=ctx.prepare_image,
        )
        extra = list(self.inner.extra_parameters())
        if extra:  # Meta-SGD: the learned inner learning rates are trained by the outer optimizer
            for p in extra:
                p.data = p.data.to(ctx.device)
            ctx.optimizer.add_param_group({"params": extra, "weight_decay": 0.0})
        self.sampler = TaskSampler(ctx, self.task_kind)
        self.generator.manual_seed(int(torch.randint(2**62, (1,), generator=ctx.mask_generator)))

    def step(self, ctx: TrainContext) -> dict[str, torch.Tensor]:
        assert self.inner is not None and self.sampler is not None
        ctx.optimizer.zero_grad(set_to_none=True)
        total = None
        for _ in range(self.tasks_per_step):
            task = self.sampler.sample(self.generator)
            support = self.sampler.batch(ctx, task, task.support_stream)
            query = self.sampler.batch(ctx, task, task.query_stream)
            with ctx.autocast():
                loss = self.inner.query_loss(support, query, lambda out, b: ctx.loss_of(out, b)[0],
                                             self.inner_steps) / self.tasks_per_step
            ctx.backward(loss)
            total = loss.detach() if total is None else total + loss.detach()
        ctx.optimizer_step()
        return {"loss": total, "query": total}

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state(),
                "inner": self.inner.state_dict() if self.inner is not None else {}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "generator" in state:
            self.generator.set_state(state["generator"])
        if self.inner is not None and state.get("inner"):
            self.inner.load_state_dict(state["inner"])
