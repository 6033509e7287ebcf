"""Per-channel scale and shift attached to the convolutions of any backbone, without touching its code.

Two uses, one mechanism: meta-transfer learning's scaling/shifting of frozen convolutions (Sun et al., 2019:
``SS(X) = (W * s) X + (b + t)``, applied to a convolution's output as ``s * (y - b) + b + t``), and the FiLM
parameters a fast-weight generator writes into the segmentation head (``x * (1 + gamma) + beta`` on the head's
input). The parameters are registered on the target modules themselves and the hooks are plain functions that
read them from the module they run on, so ``copy.deepcopy``, ``state_dict`` and ``torch.func.functional_call``
all see the right values.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

SCALE, SHIFT = "ss_scale", "ss_shift"  # meta-transfer: on a convolution's output channels
GAMMA, BETA = "film_gamma", "film_beta"  # generator: on a head's input channels

_ConvNd = nn.modules.conv._ConvNd


def convolutions(model: nn.Module) -> list[tuple[str, _ConvNd]]:
    """Every convolution (and transposed convolution) of ``model`` with its name."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, _ConvNd)]


def _channel_view(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return t.view(1, -1, *([1] * (like.dim() - 2))).to(like.dtype)


def _scale_shift_hook(module: _ConvNd, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor:
    scale, shift = getattr(module, SCALE), getattr(module, SHIFT)
    s = _channel_view(scale, output)
    out = s * output + _channel_view(shift, output)
    if module.bias is not None:  # (W * s) x + b + t  ==  s (y - b) + b + t
        out = out + (1 - s) * _channel_view(module.bias, output)
    return out


def _film_hook(module: _ConvNd, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    x = inputs[0]
    gamma, beta = getattr(module, GAMMA), getattr(module, BETA)
    return (x * (1 + _channel_view(gamma, x)) + _channel_view(beta, x), *inputs[1:])


def add_scale_shift(model: nn.Module) -> list[str]:
    """Attach a learnable per-output-channel scale (1) and shift (0) to every convolution of ``model``.

    Returns:
        the names of the new parameters (``<conv>.ss_scale``, ``<conv>.ss_shift``).
    """
    names = []
    for prefix, conv in convolutions(model):
        if hasattr(conv, SCALE):
            continue
        weight = conv.weight
        conv.register_parameter(SCALE, nn.Parameter(torch.ones(conv.out_channels, device=weight.device)))
        conv.register_parameter(SHIFT, nn.Parameter(torch.zeros(conv.out_channels, device=weight.device)))
        conv.register_forward_hook(_scale_shift_hook)
        names += [f"{prefix}.{SCALE}", f"{prefix}.{SHIFT}"]
    return names


def add_film(model: nn.Module, targets: Iterable[str]) -> dict[str, int]:
    """Attach FiLM parameters (identity: gamma = beta = 0, not trained directly) to the input of each named
    convolution.

    Returns:
        ``{parameter name: channels}`` for every ``<conv>.film_gamma`` / ``<conv>.film_beta``, in order.
    """
    out: dict[str, int] = {}
    modules = dict(model.named_modules())
    for name in targets:
        conv = modules[name]
        if not hasattr(conv, GAMMA):
            zeros = torch.zeros(conv.in_channels, device=conv.weight.device)
            conv.register_parameter(GAMMA, nn.Parameter(zeros.clone(), requires_grad=False))
            conv.register_parameter(BETA, nn.Parameter(zeros.clone(), requires_grad=False))
            conv.register_forward_pre_hook(_film_hook)
        out[f"{name}.{GAMMA}"] = conv.in_channels
        out[f"{name}.{BETA}"] = conv.in_channels
    return out
