"""The LossTerm contract: a registered term reads a SegOutput and a Batch and returns a scalar and named parts."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from .batch import Batch
from .outputs import SegOutput

#: The ``observation`` stack (a plain list, not a ContextVar: torch.compile traces reading it without a graph
#: break; a training process runs its losses on one thread).
_OBSERVING: list[bool] = [True]
#: The same switch as a 0-dim tensor, 1.0 or 0.0, changed in place (``observation_weight``).
_OBSERVING_WEIGHT = torch.ones(())


def observing() -> bool:
    """Whether stateful terms should record statistics from the current loss call (see ``observation``)."""
    return _OBSERVING[-1] and torch.is_grad_enabled()


def observation_weight() -> torch.Tensor:
    """1.0 while observing, 0.0 inside ``observation(False)``: a 0-dim CPU tensor whose value changes in place.

    A stateful term that multiplies what it records by it, instead of branching on ``observing()``, runs the same
    code for observed and unobserved calls, so a compiled step traces one graph for both (a Python bool read
    inside the step would be specialised on, one graph per value).
    """
    return _OBSERVING_WEIGHT


@contextlib.contextmanager
def observation(enabled: bool) -> Iterator[None]:
    """Strategies wrap the loss of an auxiliary batch (Meta-Drop's meta batch, MAML's inner steps) in
    ``observation(False)`` so that per-epoch statistics (preference-aware regularisation) come from training
    batches only."""
    _OBSERVING.append(bool(enabled))
    _OBSERVING_WEIGHT.fill_(float(enabled))
    try:
        yield
    finally:
        _OBSERVING.pop()
        _OBSERVING_WEIGHT.fill_(float(_OBSERVING[-1]))


_STEP_CACHE = "_prism_loss_cache"


def step_cache(batch: Any) -> dict[Any, Any] | None:
    """A dict living on ``batch`` for values every loss term of one loss evaluation shares (one-hot labels per
    level); None when the object cannot carry one. ``LossSet`` empties it at the start of each evaluation, so a
    batch whose tensors are refilled in place (static CUDA-graph buffers) never meets a stale entry."""
    cache = getattr(batch, _STEP_CACHE, None)
    if cache is None:
        cache = {}
        try:
            object.__setattr__(batch, _STEP_CACHE, cache)
        except (AttributeError, TypeError):
            return None
    return cache


def clear_step_cache(batch: Any) -> None:
    """Forget what ``step_cache(batch)`` holds (called by ``LossSet`` before every loss evaluation)."""
    cache = getattr(batch, _STEP_CACHE, None)
    if cache:
        cache.clear()


@dataclass
class LossResult:
    """A scalar loss and its named parts (detached, for logging).

    ``contributions``: optional, the term's additive pieces after its own weights (detached), which sum to
    ``total`` (the ``prism`` term: ``fuse``, ``prm``, ``pixel_kl`` ...); the run logs each one's share of the whole
    loss as ``share.<name>``. Empty: the term is one piece, named after the term.
    """

    total: torch.Tensor
    parts: dict[str, torch.Tensor] = field(default_factory=dict)
    contributions: dict[str, torch.Tensor] = field(default_factory=dict)


class LossTerm:
    """Base class for registered loss terms. The maths lives in plain functions; a term adapts them.

    ``needs``: the SegOutput parts the term reads. Stateful terms (preference-aware regularisation) override
    ``state_dict``/``load_state_dict`` and ``on_epoch_end``.
    """

    needs: ClassVar[frozenset[str]] = frozenset({"logits"})

    def __init__(self, modalities: tuple[str, ...], num_classes: int) -> None:
        self.modalities = tuple(modalities)
        self.num_classes = int(num_classes)

    def __call__(self, output: SegOutput, batch: Batch) -> LossResult:  # pragma: no cover - abstract
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None

    def on_epoch_end(self) -> None:
        return None
