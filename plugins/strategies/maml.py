"""MAML (and first-order MAML, Meta-SGD) over modality-combination or site tasks, with three backends."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, Literal

import torch
from pydantic import Field

from prism.adapt import AdaptLossFn, StepSizes, class_task_loss, fine_tune, select_parameters
from prism.backbone import Backbone
from prism.batch import Batch
from prism.errors import ConfigError
from prism.strategy import StepContext, Strategy

from .maml_backends import InnerLoop, make_inner_loop
from .options import AdaptParams, InnerSteps, TasksPerStep
from .tasks import TaskSampler


class MAML(Strategy):
    """phi_i = theta - a grad L_support(theta) (K steps); theta <- outer step on sum_i L_query(phi_i).

    The outer objective is the SUM of the query losses of the ``tasks_per_step`` tasks (Finn et al., 2017), so
    under SGD the meta step grows with the number of tasks; the logged ``loss`` is the mean query loss per task,
    comparable with the other strategies' losses. The outer step is the configured optimizer (``optim``) with its
    schedule and gradient clipping.

    Normalisation running statistics (BatchNorm) are never updated by the support steps or the query pass, in
    every backend: the inner loop runs in train mode on batch statistics and leaves the model's buffers as they
    were. (The built-in backbones use instance normalisation, which keeps none.)

    Adaptation to a new task (``adapt``) takes ``inner_steps`` steps of size ``inner_lr`` (Meta-SGD: its learned
    rates, clamped at 0) on ``adapt_params``, exactly as the inner loop does in training.
    """

    compile_refusal = ("torch.compile around a functional_call inner loop silently uses the original weights, so "
                       "the adapted parameters would be ignored")

    def __init__(
        self, *, inner_steps: InnerSteps = 1,
        inner_lr: Annotated[float, Field(gt=0, description="a: the inner step size (also that of adapt); "
                                                           "Meta-SGD's initial per-parameter rate")] = 0.01,
        learn_inner_lr: Annotated[bool, Field(description="Meta-SGD: learn one inner rate per parameter entry "
                                                          "with the outer optimizer")] = False,
        first_order: Annotated[bool, Field(description="drop second derivatives (first-order MAML)")] = True,
        tasks_per_step: TasksPerStep = 2,
        tasks: Annotated[Literal["combination", "site", "class"], Field(
            description="what a task is: one modality combination (support and query from disjoint cases), one "
                        "acquisition site, or one foreground class against the rest (scored by "
                        "prism.adapt.class_task_loss instead of the configured losses)")] = "combination",
        held_out_classes: Annotated[list[Annotated[int, Field(ge=1)]], Field(
            description="with tasks: class, classes never used as a task and left out of every task's rest, so "
                        "that meta-training gives their logits no gradient (few-shot evaluation adapts to "
                        "them)")] = [],  # noqa: B006  (validated and copied)
        backend: Annotated[Literal["torch", "higher", "learn2learn"], Field(
            description="the inner loop's implementation: torch.func (torch), higher or learn2learn")] = "torch",
        adapt_params: AdaptParams = "all",
    ) -> None:
        self.inner_steps = int(inner_steps)
        self.inner_lr = float(inner_lr)
        self.learn_inner_lr = bool(learn_inner_lr)
        self.first_order = bool(first_order)
        self.tasks_per_step = int(tasks_per_step)
        self.task_kind = tasks
        self.backend = backend
        self.adapt_params = adapt_params
        self.held_out_classes = tuple(int(c) for c in held_out_classes)
        if self.held_out_classes and tasks != "class":
            raise ConfigError("strategy.options.held_out_classes: only meaningful with tasks: class")
        self.inner: InnerLoop | None = None
        self._inner_state: dict[str, Any] = {}  # learned rates loaded before setup (adaptation outside training)
        self.sampler: TaskSampler | None = None
        self.generator = torch.Generator().manual_seed(0)

    def setup(self, ctx: StepContext) -> None:
        self.inner = make_inner_loop(
            self.backend, ctx.model, inner_lr=self.inner_lr, learn_inner_lr=self.learn_inner_lr,
            first_order=self.first_order, loss_scale=ctx.loss_scale if ctx.loss_scale() is not None else None,
            prepare=ctx.prepare_image, adapt_params=self.adapt_params,
        )
        if self._inner_state:
            self.inner.load_state_dict(self._inner_state)
        extra = list(self.inner.extra_parameters())
        if extra:  # Meta-SGD: the learned inner learning rates are trained by the outer optimizer
            ctx.add_param_group(extra, weight_decay=0.0)
        self.sampler = TaskSampler(ctx, self.task_kind, self.held_out_classes)
        self.generator.manual_seed(int(torch.randint(2**62, (1,), generator=ctx.generator)))

    def step(self, ctx: StepContext) -> dict[str, torch.Tensor]:
        assert self.inner is not None and self.sampler is not None
        ctx.zero_grad()
        total = None
        for _ in range(self.tasks_per_step):
            task = self.sampler.sample(self.generator)
            support = self.sampler.batch(ctx, task, task.support_stream)
            query = self.sampler.batch(ctx, task, task.query_stream)
            if task.target_class is None:
                def loss_fn(out, b):
                    return ctx.loss_of(out, b)[0]
            else:  # a class task: the class against the rest, the held-out classes left out
                loss_fn = class_task_loss(task.target_class, self.held_out_classes)
            with ctx.autocast():
                loss = self.inner.query_loss(support, query, loss_fn, self.inner_steps)
            ctx.backward(loss)  # gradients accumulate: the outer objective is the sum over tasks
            total = loss.detach() if total is None else total + loss.detach()
        ctx.optimizer_step()
        mean = total / self.tasks_per_step
        return {"loss": mean, "query": mean}

    def adapt(self, model: Backbone, support: Sequence[Batch], loss_fn: AdaptLossFn, *, steps: int | None = None,
              lr: float | None = None) -> dict[str, torch.Tensor]:
        """The inner loop as a task's adaptation: ``inner_steps`` steps (or ``steps``) on ``adapt_params``, with
        ``inner_lr`` or Meta-SGD's learned rates (an explicit ``lr`` overrides both)."""
        names = select_parameters(model, self.adapt_params, field="strategy.options.adapt_params")
        rates: StepSizes = self.inner_lr if lr is None else lr
        if self.learn_inner_lr and lr is None:
            learned = (self.inner.state_dict() if self.inner is not None else self._inner_state)
            if learned and all(k.isdigit() for k in learned):  # learn2learn's MetaSGD keys rates by position
                trainable = [n for n, p in model.named_parameters() if p.requires_grad]
                learned = {trainable[int(k)].replace(".", "__"): v for k, v in learned.items()}
            rates = {n: learned[n.replace(".", "__")].detach().clamp(min=0.0) for n in names}
        return fine_tune(model, support, loss_fn, steps=self.inner_steps if steps is None else steps, lr=rates,
                         params=names)

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state(),
                "inner": self.inner.state_dict() if self.inner is not None else {}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "generator" in state:
            self.generator.set_state(state["generator"])
        self._inner_state = dict(state.get("inner") or {})
        if self.inner is not None and self._inner_state:
            self.inner.load_state_dict(self._inner_state)
