"""Low-precision copies of the weights, made in one kernel per forward instead of one per weight.

Under bf16 autocast every convolution casts its float32 weight (and bias) to bf16 when it runs, and the backward
casts each weight's gradient back: two kernel launches per weight tensor and step (about 230 of the ~1,270 ops of
RFNet's step). :class:`HalfWeights` makes the same bf16 copies with one multi-tensor copy
(``torch._foreach_copy_``, whose CUDA kernel converts dtypes) and runs the model on them
(``torch.func.functional_call``); after the backward, one more multi-tensor copy moves their gradients into the
float32 weights' ``.grad``. The values are those autocast computes (the same rounding of the same weights, the
same bf16 kernels, gradients accumulated in float32), so the results are bitwise equal: only the launches differ.

Only weights of convolutions and linear layers are copied: those are the ones autocast casts; others (norm
affines) stay float32, as under autocast. A backbone that runs one of its convolutions or linear layers with
autocast switched off (``torch.autocast(..., enabled=False)``, to keep it in float32) would get a bf16 weight
there: such a backbone sets the class attribute ``cast_weights_once = False`` and keeps plain autocast.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules.conv import _ConvNd

MAX_PENDING = 8  # forwards whose gradients may still arrive (a step that never backpropagates keeps no more)


def castable_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The trainable weights and biases of ``model``'s convolutions and linear layers, by qualified name."""
    out: dict[str, nn.Parameter] = {}
    for prefix, module in model.named_modules():
        if isinstance(module, _ConvNd | nn.Linear):
            for name, p in module.named_parameters(recurse=False):
                if p.requires_grad:
                    out[f"{prefix}.{name}" if prefix else name] = p
    return out


class HalfWeights:
    """bf16 (or ``dtype``) copies of a model's castable weights, refreshed when the weights change.

    Args:
        model: the model (its weights stay the float32 parameters the optimizer updates).
        dtype: the autocast dtype.
    """

    def __init__(self, model: nn.Module, dtype: torch.dtype) -> None:
        named = castable_parameters(model)
        self.names = list(named)
        self.params = list(named.values())
        self.dtype = dtype
        self._pending: list[list[torch.Tensor]] = []  # copies whose gradients have not been moved yet
        self._grads: list[torch.Tensor | None] = [None] * len(self.params)  # float32 .grad buffers, kept
        self._scratch: list[torch.Tensor | None] = [None] * len(self.params)

    def __len__(self) -> int:
        return len(self.params)

    def weights(self) -> dict[str, torch.Tensor]:
        """``{name: low-precision copy}`` of the current weights: leaves that collect their gradients.

        Made anew at every call (one kernel): an earlier forward's graph may still hold the previous copies, and
        an optimizer's fused step changes the weights without telling autograd (their version counters stay).
        """
        copies = [torch.empty_like(p, dtype=self.dtype) for p in self.params]
        with torch.no_grad():
            torch._foreach_copy_(copies, self.params)
        if torch.is_grad_enabled():
            for c in copies:
                c.requires_grad_(True)
            self._pending = [*self._pending[-(MAX_PENDING - 1):], copies]
        return dict(zip(self.names, copies, strict=True))

    def move_gradients(self) -> None:
        """Add the copies' gradients into the float32 weights' ``.grad`` (after a backward): one multi-tensor copy
        where ``.grad`` was empty, a copy and an add where it already held a gradient."""
        for copies in self._pending:
            fresh = [i for i, c in enumerate(copies) if c.grad is not None and self.params[i].grad is None]
            summed = [i for i, c in enumerate(copies) if c.grad is not None and self.params[i].grad is not None]
            for i in fresh:
                self.params[i].grad = self._buffer(self._grads, i)
            if fresh:
                torch._foreach_copy_([self.params[i].grad for i in fresh], [copies[i].grad for i in fresh])
            if summed:
                scratch = [self._buffer(self._scratch, i) for i in summed]
                torch._foreach_copy_(scratch, [copies[i].grad for i in summed])
                torch._foreach_add_([self.params[i].grad for i in summed], scratch)
            for c in copies:
                c.grad = None
        self._pending = self._pending[-1:]  # the last forward's graph may be backpropagated again

    def _buffer(self, store: list[torch.Tensor | None], i: int) -> torch.Tensor:
        buffer = store[i]
        if buffer is None:
            buffer = store[i] = torch.empty_like(self.params[i], dtype=torch.float32)
        return buffer
