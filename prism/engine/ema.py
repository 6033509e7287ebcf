"""An exponential moving average of the weights (``train.ema``), updated on the device with no host sync.

After optimisation step ``k`` the average is ``ema_k = d * ema_{k-1} + (1 - d) * w_k``, starting from the
initial weights (``ema_0 = w_0``), so after two steps ``ema_2 = d^2 w_0 + d (1 - d) w_1 + (1 - d) w_2`` (the
average of Polyak & Juditsky 1992 with exponential weights, as timm's ``ModelEmaV2`` and
``torch.optim.swa_utils.get_ema_multi_avg_fn`` keep it). It covers every floating-point tensor of the model's
state (parameters and buffers such as normalisation statistics); integer buffers are the model's own.

One update is a single multi-tensor ``torch._foreach_lerp_`` over all those tensors (one kernel launch per
tensor group on CUDA, with no read back to the host).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


class WeightAverage:
    """The exponential moving average of a model's floating-point state.

    Args:
        model: the model whose weights are averaged (the average starts as a copy of them).
        decay: ``d`` in (0, 1).
    """

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        if not 0 < decay < 1:
            raise ValueError(f"the EMA decay must be in (0, 1), got {decay}")
        self.decay = float(decay)
        self.model = model
        state = model.state_dict(keep_vars=True)
        self.names = [name for name, t in state.items() if t.is_floating_point()]
        self.live = [state[name] for name in self.names]  # parameters and buffers (updated in place by torch)
        with torch.no_grad():
            self.average = [t.detach().clone() for t in self.live]  # same memory format as the weights
        self.in_model = False

    @torch.no_grad()
    def update(self) -> None:
        """``ema = d * ema + (1 - d) * w`` for every averaged tensor: one multi-tensor op, no host sync."""
        if self.in_model:
            raise RuntimeError("the EMA weights are in the model (applied()); update after the block ends")
        torch._foreach_lerp_(self.average, self.live, 1.0 - self.decay)

    @contextlib.contextmanager
    def applied(self) -> Iterator[torch.nn.Module]:
        """The model with the average in place of its weights for the block (validation, evaluation, saving
        ``best.pt``); its own weights come back after. The tensors are swapped, never copied."""
        if self.in_model:  # nested: already in place
            yield self.model
            return
        self._swap()
        self.in_model = True
        try:
            yield self.model
        finally:
            self._swap()
            self.in_model = False

    def _swap(self) -> None:
        with torch.no_grad():
            for i, tensor in enumerate(self.live):
                held = tensor.data
                tensor.data = self.average[i]
                self.average[i] = held

    def averaged_state(self) -> dict[str, torch.Tensor]:
        """The model's ``state_dict`` with the averaged tensors (integer buffers are the model's own)."""
        return self._state(averaged=True)

    def trained_state(self) -> dict[str, torch.Tensor]:
        """The model's own ``state_dict`` (the weights training continues from), also inside :meth:`applied`."""
        return self._state(averaged=False)

    def _state(self, *, averaged: bool) -> dict[str, torch.Tensor]:
        state = self.model.state_dict()
        if averaged == self.in_model:  # what the model holds now
            return state
        return {**state, **{name: t.detach() for name, t in zip(self.names, self.average, strict=True)}}

    @torch.no_grad()
    def reset(self) -> None:
        """Start the average anew from the model's current weights."""
        if self.in_model:
            raise RuntimeError("the EMA weights are in the model (applied()); reset after the block ends")
        torch._foreach_copy_(self.average, self.live)

    def load_averaged_state(self, state: dict[str, torch.Tensor]) -> None:
        """Take the average from a model ``state_dict`` (a checkpoint's ``model`` with ``train.ema``).

        Raises:
            KeyError, RuntimeError: a tensor is missing or has another shape.
        """
        if self.in_model:
            raise RuntimeError("the EMA weights are in the model (applied()); load after the block ends")
        with torch.no_grad():
            for name, tensor in zip(self.names, self.average, strict=True):
                saved = state[name]
                if saved.shape != tensor.shape:
                    raise RuntimeError(f"EMA weight {name}: shape {tuple(saved.shape)} vs {tuple(tensor.shape)}")
                tensor.copy_(saved)
