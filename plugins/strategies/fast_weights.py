"""A fast-weight generator: a hypernetwork that reads a task's support set and writes the head's FiLM parameters."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Annotated, Any

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from prism.adapt import AdaptLossFn, fine_tune, functional_forward
from prism.backbone import Backbone
from prism.batch import Batch
from prism.errors import ConfigError
from prism.outputs import SegOutput
from prism.strategy import StepContext, Strategy

from .channel_affine import add_film
from .options import SiteOrCombination, TasksPerStep
from .tasks import TaskSampler

GENERATOR = "fast_weight_generator"


def class_prototypes(features: torch.Tensor, label: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Class-wise mean of ``features [B, C, ...]`` under ``label [B, ...]`` over the whole support batch.

    Returns:
        ``[K, C]``; a class absent from the support set gets zeros.
    """
    onehot = F.one_hot(label, num_classes).movedim(-1, 1).to(features.dtype)  # [B, K, ...]
    if onehot.shape[2:] != features.shape[2:]:  # features at a coarser level: pool the labels' shares
        onehot = F.adaptive_avg_pool3d(onehot, features.shape[2:])
    sums = torch.einsum("bk...,bc...->kc", onehot, features)
    counts = onehot.flatten(2).sum((0, 2))
    return sums / counts.clamp(min=1e-6)[:, None]


class Generator(nn.Module):
    """g_phi: prototypes ``[K, C]`` -> one vector of FiLM parameters (starts at zero: the identity)."""

    def __init__(self, num_classes: int, channels: int, sizes: dict[str, int], hidden: int) -> None:
        super().__init__()
        self.names = list(sizes)
        self.sizes = [sizes[n] for n in self.names]
        self.body = nn.Sequential(nn.Linear(num_classes * channels, hidden), nn.GELU(), nn.Linear(hidden, hidden),
                                  nn.GELU())
        self.out = nn.Linear(hidden, sum(self.sizes))
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, prototypes: torch.Tensor) -> dict[str, torch.Tensor]:
        flat = self.out(self.body(prototypes.flatten()[None].to(self.out.weight.dtype)))[0]
        return dict(zip(self.names, torch.split(flat, self.sizes), strict=True))


class FastWeights(Strategy):
    """Meta-trained fast-weight generation (a hypernetwork in the spirit of LEO, HyperNetworks and FiLM).

    ``prepare_model`` attaches FiLM parameters (``x * (1 + gamma) + beta`` per channel, identity by default) to
    the input of every head convolution of the backbone and adds the generator g_phi to the model. A task's
    parameters rho (all gamma, beta) are generated from its support set: the backbone's level-0 ``features``
    pooled per class under the support labels, flattened, through an MLP. Each episode (MAML's task sampler)
    trains the backbone on the support batch with identity FiLM and the backbone and g_phi on the query batch
    with the generated rho: loss = L_support + L_query(rho). Adapting to a new task is one forward of g_phi on
    its support set, then ``refine_steps`` optional gradient steps on rho alone.
    """

    compile_refusal = "the query pass is a functional call with generated weights (see maml)"

    def __init__(
        self, *, hidden: Annotated[int, Field(ge=1, description="width of g_phi's hidden layers")] = 64,
        tasks_per_step: TasksPerStep = 2, tasks: SiteOrCombination = "combination",
        refine_steps: Annotated[int, Field(ge=0, description="gradient steps on the generated rho in adapt "
                                                             "(0: generation only)")] = 0,
        refine_lr: Annotated[float, Field(gt=0, description="the step size of those steps")] = 0.01,
    ) -> None:
        self.hidden = int(hidden)
        self.tasks_per_step = int(tasks_per_step)
        self.task_kind = tasks
        self.refine_steps = int(refine_steps)
        self.refine_lr = float(refine_lr)
        self.sampler: TaskSampler | None = None
        self.generator = torch.Generator().manual_seed(0)

    # ---- the model ------------------------------------------------------------------------------------------
    def prepare_model(self, model: Backbone) -> Backbone:
        if "features" not in type(model).provides:
            raise ConfigError(f"strategy.name: fast_weights reads the backbone's 'features' part, which "
                              f"{type(model).__name__} does not provide (multi_unet, rfnet, unet do)")
        targets = sorted({n.rsplit(".", 1)[0] for n in model.head_parameter_names()})
        sizes = add_film(model, targets)
        model.request_parts(model.requested | {"features"})
        channels = self._feature_channels(model)
        model.add_module(GENERATOR, Generator(model.num_classes, channels, sizes, self.hidden))
        return model

    @staticmethod
    def _feature_channels(model: Backbone) -> int:
        size = 2 * model.size_divisor * max(1, math.ceil(4 / model.size_divisor))  # coarsest level: > 1 voxel
        image = torch.zeros(1, model.num_modalities, size, size, size, dtype=next(model.parameters()).dtype)
        mask = torch.ones(1, model.num_modalities, dtype=torch.bool)
        was_training = model.training
        model.train()
        with torch.no_grad():
            out = model(image, mask)
        model.train(was_training)
        if out.features is None:
            raise ConfigError(f"strategy.name: fast_weights: {type(model).__name__} returned no 'features'")
        return int(out.features.shape[1])

    @staticmethod
    def generate(model: Backbone, outputs: Sequence[SegOutput], support: Sequence[Batch]) -> dict[str, torch.Tensor]:
        """rho for a task: g_phi of the class prototypes of the support batches' features (differentiable).

        Args:
            model: the prepared backbone.
            outputs: the model's train-mode outputs on ``support`` (with ``features``).
            support: the support batches (their labels pool the features).
        """
        generator: Generator = getattr(model, GENERATOR)
        protos = [class_prototypes(out.features, batch.label, model.num_classes)
                  for out, batch in zip(outputs, support, strict=True)]
        return generator(torch.stack(protos).mean(0))

    # ---- training -------------------------------------------------------------------------------------------
    def setup(self, ctx: StepContext) -> None:
        if not hasattr(ctx.model, GENERATOR):
            raise ConfigError("strategy.name: fast_weights: the model was not prepared by this strategy")
        self.sampler = TaskSampler(ctx, self.task_kind)
        self.generator.manual_seed(int(torch.randint(2**62, (1,), generator=ctx.generator)))

    def step(self, ctx: StepContext) -> dict[str, torch.Tensor]:
        assert self.sampler is not None
        ctx.zero_grad()
        support_total = query_total = None
        for _ in range(self.tasks_per_step):
            task = self.sampler.sample(self.generator)
            support = self.sampler.batch(ctx, task, task.support_stream)
            query = self.sampler.batch(ctx, task, task.query_stream)
            with ctx.autocast():
                out_s = functional_forward(ctx.model, {}, support, prepare=ctx.prepare_image)
                support_loss, _ = ctx.loss_of(out_s, support)
                rho = self.generate(ctx.model, [out_s], [support])
                out_q = functional_forward(ctx.model, rho, query, prepare=ctx.prepare_image)
                query_loss, _ = ctx.loss_of(out_q, query)
            ctx.backward((support_loss + query_loss) / self.tasks_per_step)
            s, q = support_loss.detach(), query_loss.detach()
            support_total = s if support_total is None else support_total + s
            query_total = q if query_total is None else query_total + q
        ctx.optimizer_step()
        n = self.tasks_per_step
        return {"loss": (support_total + query_total) / n, "support": support_total / n, "query": query_total / n}

    # ---- adaptation -----------------------------------------------------------------------------------------
    def adapt(self, model: Backbone, support: Sequence[Batch], loss_fn: AdaptLossFn, *, steps: int | None = None,
              lr: float | None = None) -> dict[str, torch.Tensor]:
        """rho generated from the support set (one forward of g_phi), then ``refine_steps`` (or ``steps``)
        gradient steps on rho alone."""
        was_training = model.training
        model.train()  # the features the generator was trained on (functional: statistics untouched)
        with torch.no_grad():
            rho = self.generate(model, [functional_forward(model, {}, b) for b in support], support)
        model.train(was_training)
        return fine_tune(model, support, loss_fn, steps=self.refine_steps if steps is None else steps,
                         lr=self.refine_lr if lr is None else lr, start=rho)

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "generator" in state:
            self.generator.set_state(state["generator"])
