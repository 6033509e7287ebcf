"""Three ways to run the MAML inner loop, with the same meta-gradients: torch.func, higher, learn2learn.

Rule shared by every backend: the support steps and the query pass run in the model's current mode (train mode
during training: batch statistics) and never write the model's normalisation running statistics.

Each adapter turns (support batch, query batch) into a query loss that is differentiable with respect to the
model's parameters (and the learned inner learning rates for Meta-SGD); the caller backpropagates it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import nn

from prism.adapt import functional_forward, gradient_steps, select_parameters
from prism.batch import Batch
from prism.errors import ConfigError
from prism.loss import observation

LossFn = Callable[[Any, Batch], torch.Tensor]  # (SegOutput, Batch) -> scalar loss


class InnerLoop:
    """Base: ``query_loss(support, query, loss_fn, steps)``; ``extra_parameters()`` are learned inner LRs."""

    def __init__(self, model: nn.Module, *, inner_lr: float, learn_inner_lr: bool, first_order: bool,
                 loss_scale: Callable[[], float] | None = None, prepare: Callable[[torch.Tensor], torch.Tensor] = None,
                 adapt_params: str | Sequence[str] = "all") -> None:
        self.model = model
        #: the parameters the inner loop adapts (the others keep their meta-learned values inside a task)
        self.names = select_parameters(model, adapt_params, field="strategy.options.adapt_params")
        self.partial = len(self.names) < sum(1 for p in model.parameters() if p.requires_grad)
        self.inner_lr = float(inner_lr)
        self.learn_inner_lr = learn_inner_lr
        self.first_order = first_order
        self.loss_scale = loss_scale
        self.prepare = prepare or (lambda x: x)

    def extra_parameters(self) -> Iterator[nn.Parameter]:
        return iter(())

    def query_loss(self, support: Batch, query: Batch, loss_fn: LossFn, steps: int) -> torch.Tensor:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None


class TorchInnerLoop(InnerLoop):
    """torch.func.functional_call + torch.autograd.grad (create_graph for second order). The default."""

    def __init__(self, model: nn.Module, **kw: Any) -> None:
        super().__init__(model, **kw)
        self.lrs = nn.ParameterDict()
        if self.learn_inner_lr:  # Meta-SGD: one learned step size per entry of every adapted parameter
            own = dict(model.named_parameters())
            for n in self.names:
                self.lrs[n.replace(".", "__")] = nn.Parameter(torch.full_like(own[n], self.inner_lr))

    def extra_parameters(self) -> Iterator[nn.Parameter]:
        return iter(self.lrs.values())

    def step_sizes(self) -> float | dict[str, torch.Tensor]:
        """The inner step size: ``inner_lr``, or Meta-SGD's learned rates (kept non-negative) by parameter name."""
        if not self.learn_inner_lr:
            return self.inner_lr
        return {n: self.lrs[n.replace(".", "__")].clamp(min=0.0) for n in self.names}

    def query_loss(self, support: Batch, query: Batch, loss_fn: LossFn, steps: int) -> torch.Tensor:
        own = dict(self.model.named_parameters())
        start = {n: own[n] for n in self.names}
        # copies: normalisation running statistics are never updated inside a task (as in higher, learn2learn)
        buffers = {n: b.clone() for n, b in self.model.named_buffers()}
        fast, _ = gradient_steps(self.model, start, [support], loss_fn, steps, self.step_sizes(),
                                 create_graph=not self.first_order,
                                 loss_scale=self.loss_scale() if self.loss_scale is not None else None,
                                 prepare=self.prepare, buffers=buffers)
        return loss_fn(functional_forward(self.model, fast, query, prepare=self.prepare, buffers=buffers), query)

    def state_dict(self) -> dict[str, Any]:
        return {k: v.detach().clone() for k, v in self.lrs.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            for k, v in state.items():
                self.lrs[k].copy_(v)


class HigherInnerLoop(InnerLoop):
    """The ``higher`` library (copy_initial_weights=False, or the meta-gradient never reaches the model)."""

    def __init__(self, model: nn.Module, **kw: Any) -> None:
        super().__init__(model, **kw)
        if self.learn_inner_lr:
            raise ConfigError("strategy.options.backend: 'higher' does not learn inner learning rates (Meta-SGD); "
                              "use backend 'torch' or 'learn2learn'")
        try:
            import higher  # noqa: F401
        except ImportError:
            raise ConfigError("strategy.options.backend: 'higher' is not installed (pip install higher)") from None

    def query_loss(self, support: Batch, query: Batch, loss_fn: LossFn, steps: int) -> torch.Tensor:
        import higher

        own = dict(self.model.named_parameters())
        inner_opt = torch.optim.SGD([own[n] for n in self.names], lr=self.inner_lr)
        scale = self.loss_scale() if self.loss_scale is not None else 1.0
        first_order = self.first_order

        def callback(grads: list[torch.Tensor | None]) -> list[torch.Tensor | None]:
            out = []
            for g in grads:
                if g is not None:
                    g = g / scale if scale != 1.0 else g
                    g = g.detach() if first_order else g
                out.append(g)
            return out

        with higher.innerloop_ctx(self.model, inner_opt, copy_initial_weights=False,
                                  track_higher_grads=True) as (fmodel, diffopt):
            for _ in range(steps):
                with observation(False):
                    loss = loss_fn(fmodel(self.prepare(support.image), support.mask), support)
                diffopt.step(loss * scale, grad_callback=callback)
            return loss_fn(fmodel(self.prepare(query.image), query.mask), query)


class Learn2LearnInnerLoop(InnerLoop):
    """learn2learn's MAML (fixed inner LR) or MetaSGD (learned per-parameter LRs)."""

    def __init__(self, model: nn.Module, **kw: Any) -> None:
        super().__init__(model, **kw)
        if self.loss_scale is not None:
            raise ConfigError("strategy.options.backend: 'learn2learn' cannot unscale fp16 inner gradients; "
                              "use train.amp=bf16 or none, or backend 'torch'")
        if self.partial:
            raise ConfigError("strategy.options.adapt_params: backend 'learn2learn' adapts every parameter; "
                              "use backend 'torch' or 'higher' for partial adaptation")
        try:
            import learn2learn as l2l
        except ImportError as exc:
            raise ConfigError(f"strategy.options.backend: learn2learn cannot be imported ({exc}); see the README "
                              "section 'learn2learn' for how to install it") from None
        if self.learn_inner_lr:
            self.wrapper = l2l.algorithms.MetaSGD(model, lr=self.inner_lr, first_order=self.first_order)
        else:
            self.wrapper = l2l.algorithms.MAML(model, lr=self.inner_lr, first_order=self.first_order,
                                               allow_unused=True)

    def extra_parameters(self) -> Iterator[nn.Parameter]:
        return iter(self.wrapper.lrs) if self.learn_inner_lr else iter(())

    def query_loss(self, support: Batch, query: Batch, loss_fn: LossFn, steps: int) -> torch.Tensor:
        learner = self.wrapper.clone()
        for _ in range(steps):
            with observation(False):
                support_loss = loss_fn(learner(self.prepare(support.image), support.mask), support)
            learner.adapt(support_loss)
        return loss_fn(learner(self.prepare(query.image), query.mask), query)

    def state_dict(self) -> dict[str, Any]:
        return {str(i): p.detach().clone() for i, p in enumerate(self.extra_parameters())}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            for i, p in enumerate(self.extra_parameters()):
                p.copy_(state[str(i)])


BACKENDS: dict[str, type[InnerLoop]] = {
    "torch": TorchInnerLoop,
    "higher": HigherInnerLoop,
    "learn2learn": Learn2LearnInnerLoop,
}


def make_inner_loop(backend: str, model: nn.Module, **kw: Any) -> InnerLoop:
    if backend not in BACKENDS:
        raise ConfigError(f"strategy.options.backend: unknown MAML backend {backend!r}; "
                          f"choose one of {', '.join(BACKENDS)}")
    return BACKENDS[backend](model, **kw)
