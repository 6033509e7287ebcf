"""Compiled training steps: ``train.compile`` (model or whole step) and ``train.cuda_graphs`` (one replayed graph).

- ``compile: model`` (or ``true``): ``torch.compile`` the model in place (same module, same state_dict keys).
- ``compile: step``: ``ctx.forward_loss`` (the model's forward and the loss set) becomes one compiled callable;
  AOTAutograd compiles its backward with it, so forward, losses and backward run as compiled graphs. The optimizer
  step is left to the fused optimizer (``build_optimizer``: one kernel per parameter group; compiling it would
  not remove launches).
- ``cuda_graphs: true``: the whole standard step (forward, losses, backward, clipping, optimizer) is captured once
  into a CUDA graph on static input buffers and replayed every step (one launch from the host). Warm-up steps
  before the capture are undone, so the run's results are those of the eager step.

Each is refused with a one-line ``ConfigError`` where it would be wrong: strategies that declare a
``compile_refusal`` (MAML's functional inner loop), CUDA graphs on a CPU, with strategies other than
``standard``, under torch.distributed, with fp16 loss scaling (its overflow check reads the host), with
``train.accumulate`` above 1, with loss terms that keep Python-side statistics (a replayed graph would skip their
updates), and when the eager step syncs with the host (checked with ``torch.cuda.set_sync_debug_mode`` on the
first warm-up step).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import fields, replace
from typing import Any, Literal

import torch

from ..batch import Batch
from ..config import Config
from ..errors import ConfigError
from .context import TrainContext
from .meter import StepHealth

CompileMode = Literal["model", "step"]


def compile_mode(value: bool | str) -> CompileMode | None:
    """``train.compile`` as a mode: False -> None, True or "model" -> "model", "step" -> "step"."""
    if value is True or value == "model":
        return "model"
    if value == "step":
        return "step"
    return None


def cuda_graph_refusal(config: Config, ctx: TrainContext) -> str | None:
    """Why ``train.cuda_graphs`` cannot capture this run's step (None: it can)."""
    if ctx.device.type != "cuda":
        return f"needs a CUDA device (train.device resolves to '{ctx.device.type}')"
    if config.strategy.name != "standard":
        return f"captures the standard step only (strategy '{config.strategy.name}' is not static)"
    if ctx.dist.enabled:
        return "not supported under torch.distributed"
    if ctx.scaler is not None:
        return "fp16 loss scaling checks for overflow on the host every step; use train.amp=bf16 or none"
    if config.train.accumulate > 1:
        return "captures one batch per step; leave train.accumulate at 1"
    stateful = [t.name for t in ctx.losses.terms if t.term.state_dict()]
    if stateful:
        return (f"loss term(s) {', '.join(stateful)} keep statistics across steps in Python, which a replayed "
                "graph would not update")
    return None


def install(config: Config, strategy: Any, ctx: TrainContext) -> None:
    """Apply ``train.compile`` and ``train.cuda_graphs`` to a built context (before ``strategy.setup``).

    Args:
        config: the run config (``train.compile``, ``train.cuda_graphs``, ``strategy.name``).
        strategy: the run's strategy; with CUDA graphs its ``step`` is replaced by a ``CudaGraphStep``.
        ctx: the training context; ``compile: step`` replaces ``ctx.forward_loss``.

    Raises:
        ConfigError: where compiling or capturing is refused (see the module docstring).
    """
    mode = compile_mode(config.train.compile)
    if (mode or config.train.cuda_graphs) and strategy.compile_refusal:
        field = "train.compile" if mode else "train.cuda_graphs"
        raise ConfigError(f"{field}: refused with strategy '{config.strategy.name}': {strategy.compile_refusal}")
    if config.train.cuda_graphs:
        reason = cuda_graph_refusal(config, ctx)
        if reason:
            raise ConfigError(f"train.cuda_graphs: {reason}")
    if mode == "model":
        ctx.model.compile()  # in place: same module, same state_dict keys
    elif mode == "step":
        ctx.forward_loss = compiled_forward_loss(ctx)
    if mode or config.train.cuda_graphs:  # compiled or captured steps cast weights their own way
        ctx.cast_weights_once = False
    if config.train.cuda_graphs:
        strategy.step = CudaGraphStep(ctx)


def compiled_forward_loss(ctx: TrainContext, **options: Any) -> Any:
    """``torch.compile`` of ``(image, mask, batch) -> losses(model(image, mask), batch)`` (its backward too).

    Args:
        ctx: the context whose ``forward_module`` (the model or its DDP wrapper) and ``losses`` are used.
        options: passed to ``torch.compile`` (e.g. ``backend``, ``mode``).

    Returns:
        A callable with ``ctx.forward_loss``'s signature.
    """
    module, losses = ctx.forward_module, ctx.losses

    def forward_loss(image: torch.Tensor, mask: torch.Tensor, batch: Batch
                     ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return losses(module(image, mask), batch)

    return torch.compile(forward_loss, **options)


def _tensor_fields(batch: Batch) -> list[str]:
    return [f.name for f in fields(batch) if isinstance(getattr(batch, f.name), torch.Tensor)]


class CudaGraphStep:
    """The standard step captured into one CUDA graph; call it as ``strategy.step(ctx)``.

    The first call draws a batch, copies it into static buffers, runs ``warmup`` eager steps on a side stream (the
    first under ``torch.cuda.set_sync_debug_mode("error")``, so a step that reads the host is refused instead of
    captured wrongly), restores the model and optimizer state those steps changed, captures the step and replays
    it. Every later call copies the next batch into the buffers and replays. The optimizer must be capturable
    (``build_optimizer`` makes it so when ``train.cuda_graphs`` is set); the LR schedule updates its LR tensor in
    place, which the graph reads.
    """

    def __init__(self, ctx: TrainContext, warmup: int = 3) -> None:
        self.ctx = ctx
        self.warmup = warmup
        self.graph: torch.cuda.CUDAGraph | None = None
        self.static: Batch | None = None
        self.parts: dict[str, torch.Tensor] = {}
        self.health: StepHealth | None = None  # the captured step's gradient norm (updated by each replay)

    @contextlib.contextmanager
    def _autocast(self) -> Iterator[None]:
        ctx = self.ctx
        if ctx.amp_dtype is None:
            yield
        else:  # the autocast weight cache must be off while capturing
            with torch.autocast(ctx.device.type, dtype=ctx.amp_dtype, cache_enabled=False):
                yield

    def _body(self, batch: Batch) -> dict[str, torch.Tensor]:
        ctx = self.ctx
        ctx.optimizer.zero_grad(set_to_none=True)
        with self._autocast():
            loss, parts = ctx.forward_loss(ctx.prepare_image(batch.image), batch.mask, batch)
        loss.backward()
        ctx.optimizer_step()
        return parts

    def _copy_in(self, batch: Batch) -> None:
        assert self.static is not None
        for name in _tensor_fields(batch):
            dst, src = getattr(self.static, name), getattr(batch, name)
            if dst.shape != src.shape:
                raise ConfigError(f"train.cuda_graphs: batch field '{name}' changed shape {tuple(dst.shape)} -> "
                                  f"{tuple(src.shape)}; a captured step needs static shapes")
            dst.copy_(src, non_blocking=True)

    def _capture(self, batch: Batch) -> None:
        ctx = self.ctx
        self.static = replace(batch, **{n: getattr(batch, n).clone() for n in _tensor_fields(batch)})
        model_state = {k: v.clone() for k, v in ctx.model.state_dict().items()}
        optim_state = {p: {k: v.clone() for k, v in st.items() if torch.is_tensor(v)}
                       for p, st in ctx.optimizer.state.items()}
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for i in range(self.warmup):
                if i == 0:
                    torch.cuda.set_sync_debug_mode("error")
                try:
                    self._body(self.static)
                except RuntimeError as exc:
                    if i == 0 and "synchroniz" in str(exc):
                        raise ConfigError(f"train.cuda_graphs: the step synchronises with the host, so it cannot "
                                          f"be captured: {str(exc).splitlines()[0]}") from None
                    raise
                finally:
                    torch.cuda.set_sync_debug_mode("default")
        torch.cuda.current_stream().wait_stream(side)
        self._restore(model_state, optim_state)
        ctx.optimizer.zero_grad(set_to_none=True)
        self.graph = torch.cuda.CUDAGraph()
        ctx.begin_step()
        with torch.cuda.graph(self.graph):
            self.parts = self._body(self.static)
        self.health = ctx.end_step()

    @torch.no_grad()
    def _restore(self, model_state: dict[str, torch.Tensor], optim_state: dict[Any, dict[str, torch.Tensor]]
                 ) -> None:
        """Undo the warm-up steps IN PLACE (the graph records addresses): parameters and the optimizer state that
        existed before get their values back; state the warm-up created (moments, step counters, momentum
        buffers of a first step) is zeroed, which is what a fresh state holds (and what the first update reads:
        SGD's zero buffer times momentum plus the gradient is its first-step buffer). Creating that state inside
        the capture instead would re-zero it on every replay."""
        ctx = self.ctx
        for key, value in ctx.model.state_dict().items():
            value.copy_(model_state[key])
        for param, state in ctx.optimizer.state.items():
            before = optim_state.get(param, {})
            for key, value in state.items():
                if torch.is_tensor(value):
                    if key in before:
                        value.copy_(before[key])
                    else:
                        value.zero_()

    def __call__(self, ctx: TrainContext) -> dict[str, torch.Tensor]:
        batch = ctx.next_batch("train")
        if self.graph is None:
            self._capture(batch)
        else:
            self._copy_in(batch)
        assert self.graph is not None and self.health is not None
        self.graph.replay()
        ctx.set_step_health(self.health)
        return dict(self.parts)
