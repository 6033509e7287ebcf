"""TrainContext: the engine's implementation of ``prism.strategy.StepContext``.

Strategies see only the contract (``prism/strategy.py``); the fields of this dataclass (streams, scaler, the
DDP wrapper, the masking table) are engine internals that the trainer and checkpointing use.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..backbone import Backbone
from ..batch import Batch
from ..errors import ConfigError
from ..masking import MaskingPolicy
from ..outputs import SegOutput
from ..registry import PluginEntry, blame
from ..seams import check_mask, check_state_storable, check_step_result, owner_of
from .distributed import DistInfo, all_reduce_mean_, gather_rows, sync_gradients
from .half_weights import HalfWeights
from .losses import LossSet
from .meter import StepHealth
from .streams import BatchStreams

#: ``forward_loss(image, mask, batch) -> (loss, parts)``: the model's forward and the loss set, the unit that
#: ``train.compile: step`` compiles.
ForwardLoss = Callable[[torch.Tensor, torch.Tensor, Batch], tuple[torch.Tensor, dict[str, torch.Tensor]]]


@dataclass
class TrainContext:
    model: Backbone
    losses: LossSet
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler | None
    streams: BatchStreams
    masking: dict[str, MaskingPolicy]
    mask_generator: torch.Generator
    device: torch.device
    amp_dtype: torch.dtype | None = None
    scaler: torch.amp.GradScaler | None = None
    grad_clip: float | None = None
    channels_last: bool = False
    dist: DistInfo = field(default_factory=DistInfo)
    step: int = 0
    total_steps: int = 1
    #: the module forward calls go through: the model, or DistributedDataParallel around model and losses
    forward_module: torch.nn.Module | None = None
    #: True when ``forward_module`` is a DDP wrapper that all-reduces gradients during backward
    ddp: bool = False
    forward_loss: ForwardLoss | None = None
    #: whether the first step of this process has run its seam checks (``run_strategy_step``)
    seams_checked: bool = False
    #: ``train.nonfinite``: "stop" (the meter stops the run) or "skip" (updates with non-finite gradients skipped)
    nonfinite: str = "stop"
    #: under bf16 autocast, run the eager forward on bf16 copies of the weights made in one kernel
    #: (:mod:`prism.engine.half_weights`: the same results, about two launches fewer per weight and step)
    cast_weights_once: bool = True
    #: ``train.accumulate``: batches whose gradients one optimisation step sums (:meth:`accumulate_gradients`)
    accumulate: int = 1

    def __post_init__(self) -> None:
        self._classes: dict[str, frozenset[int]] = {}
        self._masks_checked: set[str] = set()  # roles whose device-side mask values were read once
        if self.forward_module is None:
            self.forward_module = self.model
        if self.forward_loss is None:
            self.forward_loss = self.eager_forward_loss
        self._half: HalfWeights | None = None
        self.begin_step()

    # ---- identity ------------------------------------------------------------------------------------------
    @property
    def generator(self) -> torch.Generator:
        return self.mask_generator

    @property
    def world_size(self) -> int:
        return self.dist.world

    @property
    def rank(self) -> int:
        return self.dist.rank

    # ---- data ----------------------------------------------------------------------------------------------
    def next_batch(self, stream: str = "train", policy: str = "train") -> Batch:
        """The next batch of ``stream`` on the device, masked by the masking policy named ``policy``."""
        if policy not in self.masking:
            raise ConfigError(f"masking role '{policy}' is not configured (roles: {', '.join(self.masking)}); "
                              f"add it under masking.extra")
        raw = self.streams.next(stream)
        mask = self.draw_mask(raw.availability, policy)
        return raw.to(self.device, non_blocking=self.device.type == "cuda").with_mask(mask)

    def draw_mask(self, availability: torch.Tensor, policy: str = "train") -> torch.Tensor:
        """Apply a masking policy. Under torch.distributed every rank draws the masks of the whole global batch
        (same generator state everywhere) and keeps its own rows, so results match a single process."""
        if not self.dist.enabled:
            return self._checked_mask(policy, availability)
        local = availability.shape[0]
        everyone = gather_rows(availability.to(torch.uint8), self.dist).bool()
        mask = self._checked_mask(policy, everyone)
        return mask[self.dist.rank * local:(self.dist.rank + 1) * local]

    def _checked_mask(self, role: str, availability: torch.Tensor) -> torch.Tensor:
        """The policy's mask, checked against the MaskingPolicy contract (``prism.seams.check_mask``): every
        draw on the CPU (where the engine's availability lives), the first draw of a role elsewhere."""
        policy = self.masking[role]
        mask = policy(availability, self.mask_generator)
        values = not isinstance(mask, torch.Tensor) or mask.device.type == "cpu" or role not in self._masks_checked
        check_mask(mask, availability, owner_of(policy, f"masking policy (role '{role}')"), values=values)
        self._masks_checked.add(role)
        return mask

    def raw_batch(self, stream: str = "train") -> Batch:
        """The next batch of ``stream`` on the device with every available modality (the caller masks it)."""
        return self.streams.next(stream).to(self.device, non_blocking=self.device.type == "cuda")

    def case_ids(self, stream: str = "train") -> tuple[str, ...]:
        return self.streams.subsets.get(stream, self.streams.case_ids)

    def case_site(self, case_id: str) -> str | None:
        return self.streams.reader.info(case_id).site

    def case_classes(self, case_id: str) -> frozenset[int]:
        if case_id not in self._classes:
            _, label = self.streams.reader.read_case(case_id)
            self._classes[case_id] = frozenset(int(v) for v in np.unique(label))
        return self._classes[case_id]

    def define_stream(self, name: str, case_ids: Sequence[str]) -> None:
        unknown = sorted(set(case_ids) - set(self.streams.case_ids))
        if unknown:
            raise ConfigError(f"stream '{name}': cases {unknown[:3]} are not training cases")
        self.streams.define(name, case_ids)

    def masking_roles(self) -> tuple[str, ...]:
        return tuple(self.masking)

    def add_masking_policy(self, role: str, policy: MaskingPolicy) -> None:
        if role in self.masking:
            raise ConfigError(f"masking role '{role}' is already configured")
        self.masking[role] = policy

    # ---- forward and loss ----------------------------------------------------------------------------------
    def parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def prepare_image(self, image: torch.Tensor) -> torch.Tensor:
        return image.contiguous(memory_format=torch.channels_last_3d) if self.channels_last else image

    def loss_of(self, output: SegOutput, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Apply the loss set to an output computed elsewhere (e.g. by a functional call)."""
        return self.losses(output, batch)

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        if self.amp_dtype is None:
            yield
        else:
            with torch.autocast(self.device.type, dtype=self.amp_dtype):
                yield

    def eager_forward_loss(self, image: torch.Tensor, mask: torch.Tensor, batch: Batch
                           ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The model and the loss set, op by op (under DDP, the wrapper runs both)."""
        if self.ddp:
            return self.forward_module(image, mask, batch)
        half = self._half_weights()
        if half is not None:
            output = torch.func.functional_call(self.model, half.weights(), (image, mask), strict=False)
            return self.losses(output, batch)
        return self.losses(self.model(image, mask), batch)

    def _half_weights(self) -> HalfWeights | None:
        """The bf16 weight copies, when this forward runs under bf16 autocast on an eager, single-process model."""
        if not (self.cast_weights_once and getattr(self.model, "cast_weights_once", True)
                and self.amp_dtype == torch.bfloat16 and torch.is_autocast_enabled(self.device.type)) \
                or self.ddp or getattr(self.model, "_compiled_call_impl", None) is not None:
            return None
        if self._half is None or self._half.dtype != self.amp_dtype:
            self._half = HalfWeights(self.model, self.amp_dtype)
        return self._half if len(self._half) else None

    def compute_loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Forward the model on ``batch`` and apply the loss set (under autocast when enabled)."""
        assert self.forward_loss is not None
        with self.autocast():
            return self.forward_loss(self.prepare_image(batch.image), batch.mask, batch)

    def accumulate_gradients(self, stream: str = "train", policy: str = "train") -> dict[str, torch.Tensor]:
        """Backpropagate the loss of ``accumulate`` batches of ``stream`` (masked by ``policy``), each scaled by
        ``1 / accumulate``: the gradients add up to those of the mean loss over the concatenated batch.

        Each batch is drawn, forwarded and backpropagated in turn, so only one batch's activations are held at a
        time. Under DistributedDataParallel the gradients are all-reduced once, with the last batch's backward.
        The gradients are added to what ``.grad`` holds (call ``zero_grad`` first).

        Returns:
            The loss parts, each the mean over the batches (detached, on the device).
        """
        n = self.accumulate
        if n == 1:  # the plain step, op for op
            loss, parts = self.compute_loss(self.next_batch(stream, policy))
            self.backward(loss)
            return parts
        totals: dict[str, torch.Tensor] = {}
        for i in range(n):
            sync = i == n - 1 or not self.ddp
            with contextlib.nullcontext() if sync else self.forward_module.no_sync():
                loss, parts = self.compute_loss(self.next_batch(stream, policy))
                self.backward(loss / n)
            for name, value in parts.items():
                totals[name] = value / n if name not in totals else totals[name] + value / n
        return totals

    # ---- gradients and updates -----------------------------------------------------------------------------
    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def backward(self, loss: torch.Tensor) -> None:
        if self.nonfinite == "skip":
            self._losses.append(loss.detach())
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
        if self._half is not None:
            self._half.move_gradients()

    def _needs_explicit_sync(self) -> bool:
        return self.dist.enabled and not self.ddp

    def sync_gradients(self, params: Sequence[torch.nn.Parameter]) -> None:
        """All-reduce (mean) the gradients of ``params``; a no-op when DDP already did it during backward."""
        if self._needs_explicit_sync():
            sync_gradients(list(params), self.dist)

    def optimizer_step(self, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Synchronise, unscale (fp16), clip gradients and step ``optimizer`` (default: the main one).

        The gradient norm is kept on the device for the engine's health check (no host sync). With
        ``nonfinite == "skip"`` a non-finite gradient or loss skips the update: on the device for optimizers with
        a fused kernel (their ``found_inf`` input, as ``GradScaler`` uses it), else after one host read.
        """
        opt = optimizer or self.optimizer
        params = [p for group in opt.param_groups for p in group["params"]]
        self.sync_gradients(params)
        if self.scaler is not None:
            self.scaler.unscale_(opt)
        norm = self._gradient_norm([p for p in params if p.grad is not None], clip=True)
        if self.scaler is not None:  # fp16: the scaler skips overflowing steps itself
            self.scaler.step(opt)
            self.scaler.update()
        elif self.nonfinite == "skip" and norm is not None:
            self._step_unless_nonfinite(opt, norm)
        else:
            opt.step()

    def clip_and_step(self, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Deprecated name of :meth:`optimizer_step`."""
        warnings.warn("StepContext.clip_and_step is deprecated; call optimizer_step", DeprecationWarning,
                      stacklevel=2)
        self.optimizer_step(optimizer)

    def _gradient_norm(self, tensors: list[torch.Tensor], *, clip: bool) -> torch.Tensor | None:
        """The total gradient norm, recorded for the step's health unless fp16 loss scaling owns overflow handling.

        Args:
            tensors: with ``clip``, parameters whose ``.grad`` is clipped in place to ``grad_clip``; without,
                gradients.
            clip: clip (when ``grad_clip`` is set) the parameters' gradients.
        """
        if not tensors:
            return None
        if clip and self.grad_clip is not None:
            norm = torch.nn.utils.clip_grad_norm_(tensors, self.grad_clip, foreach=True)
        else:
            grads = [p.grad for p in tensors] if clip else tensors
            norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
        if self.scaler is None:
            self._grad_norms.append(norm)
        return norm

    def _nonfinite_flag(self, norm: torch.Tensor) -> torch.Tensor:
        """Device bool: the gradient norm or a loss backpropagated in this step is not finite."""
        total = norm
        for loss in self._losses:
            total = total + loss.float() * 0  # inf * 0 and nan * 0 are nan: the sum is finite iff all are
        return ~torch.isfinite(total)

    def _step_unless_nonfinite(self, opt: torch.optim.Optimizer, norm: torch.Tensor) -> None:
        bad = self._nonfinite_flag(norm)
        if opt.defaults.get("fused"):
            opt.found_inf = bad.float()  # type: ignore[attr-defined]  # the fused kernel skips the update
            try:
                opt.step()
            finally:
                del opt.found_inf  # type: ignore[attr-defined]
            self._found_inf = bad if self._found_inf is None else self._found_inf | bad
        elif bool(bad):  # one host read per step, as GradScaler does for optimizers without a fused kernel
            self._skipped_on_host = True
        else:
            opt.step()

    def begin_step(self) -> None:
        """Forget the previous step's gradient health (the engine calls it before each step)."""
        self._grad_norms: list[torch.Tensor] = []
        self._losses: list[torch.Tensor] = []
        self._found_inf: torch.Tensor | None = None
        self._skipped_on_host = False

    def set_step_health(self, health: StepHealth) -> None:
        """Make ``health`` this step's (a replayed CUDA graph updates the tensors its capture recorded)."""
        self.begin_step()
        self._grad_norms = [] if health.grad_norm is None else [health.grad_norm]
        self._found_inf = health.found_inf

    def end_step(self) -> StepHealth:
        """What this step's gradients looked like (device tensors: no host sync)."""
        norms = self._grad_norms
        norm = None if not norms else norms[0] if len(norms) == 1 else torch.stack(norms).sum()
        return StepHealth(norm, self._found_inf, self._skipped_on_host)

    def add_param_group(self, params: Sequence[torch.nn.Parameter], **options: Any) -> None:
        params = list(params)
        for p in params:
            p.data = p.data.to(self.device)
        self.optimizer.add_param_group({"params": params, **options})

    def learning_rate(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def loss_scale(self) -> float | None:
        return float(self.scaler.get_scale()) if self.scaler is not None else None

    def unscaled_clipped_grads(self, params: Sequence[torch.nn.Parameter]) -> list[torch.Tensor] | None:
        """The gradients of ``params`` unscaled (fp16) and clipped, for updates made outside an optimizer.

        Returns None when an fp16 gradient overflowed, or (``nonfinite == "skip"``) a gradient is not finite: the
        caller skips its update, as GradScaler would (that check reads one value on the host).
        """
        params = list(params)
        self.sync_gradients(params)
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        if self.scaler is not None:
            scale = self.scaler.get_scale()
            grads = torch._foreach_mul(grads, 1.0 / scale)
            if not bool(torch.isfinite(torch.stack(torch._foreach_norm(grads))).all()):  # one host sync
                self.scaler.update(new_scale=scale * self.scaler.get_backoff_factor())  # as GradScaler would
                return None
        norm = self._gradient_norm(grads, clip=False)
        if self.nonfinite == "skip" and norm is not None and bool(self._nonfinite_flag(norm)):  # one host read
            self._skipped_on_host = True
            return None
        if self.grad_clip is not None and norm is not None:
            factor = (self.grad_clip / (norm + 1e-6)).clamp(max=1.0)
            grads = torch._foreach_mul(grads, factor)
        return grads

    def mean_over_ranks(self, parts: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Average logged values over ranks (for logging only)."""
        if not self.dist.enabled or not parts:
            return parts
        values = torch.stack([v.detach().float().reshape(()) for v in parts.values()])
        all_reduce_mean_([values], self.dist)
        return dict(zip(parts, values, strict=True))


def run_strategy_step(strategy: Any, entry: PluginEntry, ctx: TrainContext) -> dict[str, torch.Tensor]:
    """One optimisation step of ``strategy`` (its registry ``entry``), its plugins' contracts checked.

    An exception inside the step is blamed on the plugin whose code raised it (the strategy, or a loss term,
    backbone or masking policy it called); the returned value must be a dict of scalar tensors holding ``loss``
    (every step: metadata only). After the first step of the process, the state dicts of the strategy, the
    masking policies and the loss terms must survive a weights-only checkpoint, so that a bug is reported before
    the first checkpoint is written.

    Returns:
        The step's named values for logging.

    Raises:
        PluginBug: headed by the plugin at fault.
    """
    with blame(entry, f"running step {ctx.step + 1}"):
        parts = check_step_result(strategy.step(ctx), entry)
    if not ctx.seams_checked:
        check_state_storable(strategy, entry)
        for role, policy in ctx.masking.items():
            check_state_storable(policy, owner_of(policy, f"masking policy (role '{role}')"))
        for term in ctx.losses.terms:
            check_state_storable(term.term, term.entry if term.entry is not None else owner_of(term.term, "loss"))
        ctx.seams_checked = True
    return parts
