"""TrainContext: what a strategy's step can use (model, losses, optimizer, batches, AMP) and nothing else."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from ..backbone import Backbone
from ..batch import Batch
from ..masking import MaskingPolicy
from .distributed import DistInfo, all_reduce_mean_, gather_rows, sync_gradients
from .losses import LossSet
from .streams import BatchStreams, move_batch


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
    extra: dict[str, object] = field(default_factory=dict)

    def next_batch(self, stream: str = "train", policy: str = "train") -> Batch:
        """The next batch of ``stream`` on the device, masked by the masking policy named ``policy``."""
        raw = self.streams.next(stream)
        mask = self.draw_mask(raw.availability, policy)
        return move_batch(raw, self.device).with_mask(mask)

    def draw_mask(self, availability: torch.Tensor, policy: str = "train") -> torch.Tensor:
        """Apply a masking policy. Under torch.distributed every rank draws the masks of the whole global batch
        (same generator state everywhere) and keeps its own rows, so results match a single process."""
        if not self.dist.enabled:
            return self.masking[policy](availability, self.mask_generator)
        local = availability.shape[0]
        everyone = gather_rows(availability.to(torch.uint8), self.dist).bool()
        mask = self.masking[policy](everyone, self.mask_generator)
        return mask[self.dist.rank * local:(self.dist.rank + 1) * local]

    def raw_batch(self, stream: str = "train") -> Batch:
        """The next batch of ``stream`` on the device with every available modality (the caller masks it)."""
        return move_batch(self.streams.next(stream), self.device)

    def parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def prepare_image(self, image: torch.Tensor) -> torch.Tensor:
        return image.contiguous(memory_format=torch.channels_last_3d) if self.channels_last else image

    def loss_of(self, output: object, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Apply the loss set to an output computed elsewhere (e.g. by a functional call)."""
        return self.losses(output, batch)  # type: ignore[arg-type]

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        if self.amp_dtype is None:
            yield
        else:
            with torch.autocast(self.device.type, dtype=self.amp_dtype):
                yield

    def compute_loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Forward the model on ``batch`` and apply the loss set (under autocast when enabled)."""
        with self.autocast():
            output = self.model(self.prepare_image(batch.image), batch.mask)
            return self.losses(output, batch)

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def clip_and_step(self, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Unscale (fp16), clip gradients and step ``optimizer`` (default: the main one)."""
        opt = optimizer or self.optimizer
        sync_gradients([p for group in opt.param_groups for p in group["params"]], self.dist)
        if self.scaler is not None:
            self.scaler.unscale_(opt)
        if self.grad_clip is not None:
            params = [p for group in opt.param_groups for p in group["params"] if p.grad is not None]
            torch.nn.utils.clip_grad_norm_(params, self.grad_clip)
        if self.scaler is not None:
            self.scaler.step(opt)
            self.scaler.update()
        else:
            opt.step()

    def unscaled_clipped_grads(self, params: list[torch.nn.Parameter]) -> list[torch.Tensor] | None:
        """The gradients of ``params`` unscaled (fp16) and clipped, for updates made outside an optimizer.

        Returns None when an fp16 gradient overflowed (the caller skips its update, as GradScaler would).
        """
        sync_gradients(params, self.dist)
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        if self.scaler is not None:
            scale = self.scaler.get_scale()
            grads = torch._foreach_mul(grads, 1.0 / scale)
            if not bool(torch.isfinite(torch.stack(torch._foreach_norm(grads))).all()):  # one host sync
                self.scaler.update(new_scale=scale * self.scaler.get_backoff_factor())  # as GradScaler would
                return None
        if self.grad_clip is not None:
            norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
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

    def optimizer_step(self) -> None:
        self.clip_and_step(self.optimizer)
