"""torch.distributed for prism (launched by torchrun): rank info, DDP wrapping, gradient all-reduce, gathering masks.

Strategies with ``gradient_sync = "ddp"`` (standard, Meta-Drop) train through DistributedDataParallel, whose
bucketed all-reduce overlaps the backward pass; the others (MAML-family: gradients from functional calls) have
their gradients all-reduced explicitly (a mean over ranks, one flat buffer per call) when the step reads them.
Rank 0 writes logs and checkpoints.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from ..errors import ConfigError


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_from_env(device_kind: str) -> DistInfo:
    """Join the process group torchrun describes in the environment (single process when there is none)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_available():
        raise ConfigError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_kind == "cuda" else "gloo")
    return DistInfo(rank=dist.get_rank(), world=dist.get_world_size(),
                    local_rank=int(os.environ.get("LOCAL_RANK", "0")))


class ForwardAndLoss(torch.nn.Module):
    """The model and the loss set as one module returning ``(loss, detached parts)``: what DDP wraps, so that its
    search for unused parameters starts from the loss (a SegOutput also carries parts no loss reads)."""

    def __init__(self, model: torch.nn.Module, losses: Callable[[Any, Any], Any]) -> None:
        super().__init__()
        self.model = model
        self.losses = losses

    def forward(self, image: torch.Tensor, mask: torch.Tensor, batch: Any) -> Any:
        return self.losses(self.model(image, mask), batch)


def wrap_ddp(model: torch.nn.Module, losses: Callable[[Any, Any], Any], device: torch.device) -> torch.nn.Module:
    """``model`` and its losses in DistributedDataParallel (parameters broadcast from rank 0; the model itself is
    unchanged). Called as ``wrapped(image, mask, batch) -> (loss, parts)``.

    ``find_unused_parameters``: backbones skip the paths no loss reads, so some parameters get no gradient in a
    step; DDP must know, or it waits for them forever.
    """
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(ForwardAndLoss(model, losses), device_ids=ids, find_unused_parameters=True)


def all_reduce_mean_(tensors: list[torch.Tensor], info: DistInfo) -> None:
    """In-place mean over ranks of ``tensors`` (flattened into one buffer: one collective call)."""
    if not info.enabled or not tensors:
        return
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat)
    flat /= info.world
    offset = 0
    for t in tensors:
        n = t.numel()
        t.copy_(flat[offset:offset + n].view_as(t))
        offset += n


def sync_gradients(params: list[torch.nn.Parameter], info: DistInfo) -> None:
    """Average the gradients of ``params`` over ranks (missing gradients count as zero)."""
    if not info.enabled:
        return
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    all_reduce_mean_([p.grad for p in params], info)


def gather_rows(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Concatenate every rank's ``t`` (same shape on each) along dim 0, in rank order."""
    if not info.enabled:
        return t
    parts = [torch.empty_like(t) for _ in range(info.world)]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts)
