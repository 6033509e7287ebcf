"""The Strategy contract: one optimisation step, and everything a step may use (``StepContext``).

A strategy (standard training, Meta-Drop, MAML, a third party's) owns how gradients are computed and applied in
one step. It programs against ``StepContext`` only: the engine implements it (``prism.engine`` is never imported
by a strategy), so streams, gradient synchronisation under torch.distributed, fp16 loss scaling and clipping stay
the engine's business.

A minimal strategy::

    from prism.strategy import StepContext, Strategy

    class Plain(Strategy):
        def step(self, ctx: StepContext) -> dict[str, torch.Tensor]:
            batch = ctx.next_batch("train")
            ctx.zero_grad()
            loss, parts = ctx.compute_loss(batch)
            ctx.backward(loss)
            ctx.optimizer_step()
            return parts
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch

from .adapt import ADAPT_DEFAULTS, AdaptLossFn, fine_tune
from .backbone import Backbone
from .batch import Batch
from .masking import MaskingPolicy
from .outputs import SegOutput


@runtime_checkable
class StepContext(Protocol):
    """What one training step may use. Implemented by the engine; strategies never build one.

    Attributes:
        model: the backbone being trained (a ``prism.backbone.Backbone``; under DDP the unwrapped module).
        optimizer: the configured optimizer. Step it with ``optimizer_step`` (gradient sync, fp16 unscaling and
            clipping happen there); read ``learning_rate``; add parameter groups with ``add_param_group``.
        device: where batches and parameters live.
        step: optimisation steps completed before this one (0 in the first step).
        total_steps: ``train.steps``.
        generator: the run's random generator for masks and task sampling (checkpointed by the engine). Draw
            from it, or seed a strategy's own generator from it in ``setup``, never from global RNG state.
        world_size: processes under torch.distributed (1 otherwise); ``rank``: this process's index.
        accumulate: ``train.accumulate``, the batches whose gradients one step sums (see
            ``accumulate_gradients``; 1 unless the strategy declares ``accumulates``).
    """

    model: Backbone
    optimizer: torch.optim.Optimizer
    device: torch.device
    step: int
    total_steps: int
    generator: torch.Generator
    accumulate: int

    @property
    def world_size(self) -> int: ...

    @property
    def rank(self) -> int: ...

    # ---- data ---------------------------------------------------------------------------------------------
    def next_batch(self, stream: str = "train", policy: str = "train") -> Batch:
        """The next batch of ``stream`` on the device, masked by the masking policy of role ``policy``."""
        ...

    def raw_batch(self, stream: str = "train") -> Batch:
        """The next batch of ``stream`` with every available modality (``mask == availability``)."""
        ...

    def case_ids(self, stream: str = "train") -> tuple[str, ...]:
        """The cases ``stream`` draws from (by default every training case)."""
        ...

    def case_site(self, case_id: str) -> str | None:
        """The acquisition site of a training case (None when the dataset records none)."""
        ...

    def case_classes(self, case_id: str) -> frozenset[int]:
        """The label values present in a training case's label map (read once, then remembered)."""
        ...

    def define_stream(self, name: str, case_ids: Sequence[str]) -> None:
        """Create (or restrict) stream ``name`` to draw only from ``case_ids``; its position is checkpointed."""
        ...

    def masking_roles(self) -> tuple[str, ...]:
        """The masking roles configured for this run (``train`` and the ``masking.extra`` keys)."""
        ...

    def add_masking_policy(self, role: str, policy: MaskingPolicy) -> None:
        """Register a masking policy under a new role (its state is checkpointed); a taken role is an error."""
        ...

    # ---- forward and loss -----------------------------------------------------------------------------------
    def autocast(self) -> contextlib.AbstractContextManager[None]:
        """The run's mixed-precision context (a no-op without ``train.amp`` on CUDA)."""
        ...

    def prepare_image(self, image: torch.Tensor) -> torch.Tensor:
        """The image in the model's memory format (channels-last when configured)."""
        ...

    def compute_loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Forward the model on ``batch`` and apply the configured losses under autocast.

        Returns:
            the scalar loss, and its detached named parts for logging.
        """
        ...

    def loss_of(self, output: SegOutput, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Apply the configured losses to an output computed elsewhere (e.g. a functional call)."""
        ...

    def accumulate_gradients(self, stream: str = "train", policy: str = "train") -> dict[str, torch.Tensor]:
        """Draw ``accumulate`` batches of ``stream`` masked by ``policy`` and backpropagate each one's loss divided
        by ``accumulate``, one batch at a time: the gradients add up to those of the mean loss over the
        concatenated batch (with one batch, ``next_batch``, ``compute_loss`` and ``backward``). Gradients are
        added to ``.grad`` (call ``zero_grad`` first); under DDP they are all-reduced once, with the last batch.

        Returns:
            the loss parts, each the mean over the batches (detached).
        """
        ...

    # ---- gradients and updates ------------------------------------------------------------------------------
    def parameters(self) -> list[torch.nn.Parameter]:
        """The trainable parameters of the model, in ``named_parameters`` order."""
        ...

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear the gradients of every parameter of the main optimizer."""
        ...

    def backward(self, loss: torch.Tensor) -> None:
        """Backpropagate ``loss`` (scaled under fp16 autocast)."""
        ...

    def optimizer_step(self, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Synchronise gradients across processes, unscale (fp16), clip (``optim.grad_clip``) and step
        ``optimizer`` (default: the main one). Use it for inner optimizers too (Reptile).

        The gradient norm is kept on the device for the engine's non-finite check; with
        ``train.nonfinite: skip`` a non-finite gradient or loss makes no update (on the device for fused
        optimizers, as ``GradScaler`` skips).
        """
        ...

    def add_param_group(self, params: Sequence[torch.nn.Parameter], **options: Any) -> None:
        """Let the main optimizer train extra parameters (e.g. Meta-SGD's learned rates), moved to the device."""
        ...

    def learning_rate(self) -> float:
        """The main optimizer's current learning rate (first parameter group, after the schedule)."""
        ...

    def loss_scale(self) -> float | None:
        """The fp16 loss scale gradients of ``backward`` carry (None when not scaling)."""
        ...

    def unscaled_clipped_grads(self, params: Sequence[torch.nn.Parameter]) -> list[torch.Tensor] | None:
        """Gradients of ``params`` synchronised, unscaled and clipped, for updates made outside an optimizer.

        Returns:
            one tensor per parameter, or None when an fp16 gradient overflowed or, with ``train.nonfinite:
            skip``, a gradient is not finite: skip the update.
        """
        ...

    def sync_gradients(self, params: Sequence[torch.nn.Parameter]) -> None:
        """Average the gradients of ``params`` over processes now (no-op for one process)."""
        ...

    def mean_over_ranks(self, parts: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Average logged values over processes (for logging only)."""
        ...


class Strategy:
    """Base class for meta-strategies. Standard training is the trivial one.

    ``setup(ctx)`` runs once before the first step (define streams, add masking roles or parameter groups, check
    compatibility); ``step(ctx)`` pulls the batches it needs from ``ctx``, updates the parameters and returns
    detached losses for logging (``loss`` is shown in the progress line). Return them as tensors on the device and
    never read them (``float(v)``, ``.item()``): a read makes the host wait for the device every step. The engine
    adds them up on the device, logs each part's mean once per log interval, and stops the run (or skips the
    step, ``train.nonfinite``) when one is not finite. A step that calls neither ``ctx.backward`` nor
    ``ctx.optimizer_step`` and changes no parameter is reported.

    Class attributes:
        uses_optimizer: False tells the engine the configured optimizer and its LR schedule are unused.
        compile_refusal: why ``train.compile`` is refused with this strategy (None: compiling is fine).
        gradient_sync: ``"ddp"`` lets the engine wrap the model in DistributedDataParallel (gradients are
            all-reduced during ``backward``, overlapping it); ``"explicit"`` keeps the plain model, and the
            context all-reduces gradients when they are read (``optimizer_step``, ``unscaled_clipped_grads``,
            ``sync_gradients``). Strategies whose gradients come from functional calls or ``autograd.grad``
            (MAML) must be explicit.
        accumulates: True when ``step`` draws its batches through ``ctx.accumulate_gradients``, so that
            ``train.accumulate`` applies to it (the engine refuses ``train.accumulate`` above 1 otherwise).
    """

    uses_optimizer: ClassVar[bool] = True
    accumulates: ClassVar[bool] = False
    compile_refusal: ClassVar[str | None] = None
    gradient_sync: ClassVar[str] = "explicit"

    #: fine-tuning defaults of the base ``adapt`` (strategies without an adaptation rule of their own)
    adapt_steps: ClassVar[int] = ADAPT_DEFAULTS.steps
    adapt_lr: ClassVar[float] = ADAPT_DEFAULTS.lr

    def prepare_model(self, model: Backbone) -> Backbone:
        """Change the freshly built backbone before training and before a trained run is loaded (evaluation,
        prediction): add parameters or hooks, freeze weights. The engine calls it with the model on the CPU,
        after ``model.init_from`` weights are loaded and before the optimizer sees the parameters, so a
        checkpoint's keys match. Default: the model unchanged.
        """
        return model

    def setup(self, ctx: StepContext) -> None:
        return None

    def adapt(self, model: Backbone, support: Sequence[Batch], loss_fn: AdaptLossFn, *, steps: int | None = None,
              lr: float | None = None) -> dict[str, torch.Tensor]:
        """Weights adapted to a task from its support batches; ``model`` (the meta-learned weights) is unchanged.

        Meta-strategies override this with their own rule (MAML: its inner rate and steps, on the parameters
        it adapts; Meta-SGD: its learned rates), built on :func:`prism.adapt.fine_tune` (the one adaptation loop).
        This default, for strategies without one (standard training, Meta-Drop), fine-tunes every parameter with
        plain SGD. Use :func:`prism.adapt.adapted_copy` (or :func:`prism.adapt.adapted_model`) to predict with the
        result; run under :func:`prism.adapt.precision` for mixed precision.

        Args:
            model: the trained backbone (as the engine built it; in train mode for the steps).
            support: the task's support batches; step ``i`` uses ``support[i % len(support)]``.
            loss_fn: ``(output, batch) -> scalar``.
            steps: gradient steps (default: the strategy's own; ``adapt_steps`` for fine-tuning).
            lr: step size (default: the strategy's own; ``adapt_lr`` for fine-tuning).

        Returns:
            ``{parameter name: adapted tensor}`` for the parameters it adapted (detached).
        """
        return fine_tune(model, support, loss_fn, steps=self.adapt_steps if steps is None else steps,
                         lr=self.adapt_lr if lr is None else lr)

    def step(self, ctx: StepContext) -> dict[str, torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None
