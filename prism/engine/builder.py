"""Build a run's parts from a validated config through the registry; every mistake names its config field."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.optim.optimizer import _get_fused_kernels_supported_devices

from ..backbone import Backbone
from ..config import Config
from ..errors import ConfigError, PluginError
from ..masking import MaskingPolicy
from ..outputs import check_provides_needs
from ..registry import get_registry
from ..strategy import Strategy
from .losses import LossSet, WeightedTerm


@dataclass
class Parts:
    model: Backbone
    losses: LossSet
    masking: dict[str, MaskingPolicy]
    strategy: Strategy


def build_parts(config: Config, modalities: tuple[str, ...], num_classes: int) -> Parts:
    reg = get_registry()
    model = reg.create("backbone", config.model.name, modalities, num_classes, field_name="model.name",
                       **config.model.options)
    if not isinstance(model, Backbone):
        raise PluginError(f"model.name: backbone '{config.model.name}' did not build a prism Backbone "
                          f"(got {type(model).__name__})")
    terms = []
    for i, choice in enumerate(config.losses):
        term = reg.create("loss", choice.name, modalities, num_classes, field_name=f"losses.{i}.name",
                          **choice.options)
        # the built term's needs: options may add parts (prism's separate=true reads RFNet's 'sep')
        check_provides_needs(config.model.name, type(model).provides, choice.name, term.needs)
        terms.append(WeightedTerm(choice.name, choice.weight, term))
    masking = {"train": reg.create("masking", config.masking.train.name, modalities,
                                   field_name="masking.train.name", **config.masking.train.options)}
    for role, choice in config.masking.extra.items():
        masking[role] = reg.create("masking", choice.name, modalities, field_name=f"masking.extra.{role}.name",
                                   **choice.options)
    model.request_parts(frozenset().union(*(t.term.needs for t in terms)))
    strategy = reg.create("strategy", config.strategy.name, field_name="strategy.name", **config.strategy.options)
    bad = [s for s in config.data.patch_size if s % model.size_divisor]
    if bad:
        raise ConfigError(f"data.patch_size: {list(config.data.patch_size)} must be multiples of "
                          f"{model.size_divisor} for backbone '{config.model.name}'")
    return Parts(model=model, losses=LossSet(terms), masking=masking, strategy=strategy)


def build_optimizer(config: Config, model: torch.nn.Module, *, capturable: bool = False) -> torch.optim.Optimizer:
    """The configured optimizer over the trainable parameters, with its step on the device.

    Where torch has a fused kernel for the parameters' device (CUDA and CPU among them) the step is one fused
    kernel per parameter group and the step counters live on the device, so a step reads nothing back to the
    host; elsewhere the multi-tensor (foreach) implementation is used. The update is the same as the
    per-parameter implementation's (tests compare them).

    Args:
        config: the run config (``optim``).
        model: the module whose parameters (``requires_grad``) are optimised, already on its device.
        capturable: also make the learning rate a device tensor and the step capturable, so a CUDA graph can
            replay it (the LR schedule then updates that tensor in place); implied by ``train.cuda_graphs`` on
            CUDA.

    Returns:
        The optimizer.
    """
    o = config.optim
    params = [p for p in model.parameters() if p.requires_grad]
    device = params[0].device if params else torch.device("cpu")
    fast: dict[str, object] = {"foreach": True}
    if device.type in _get_fused_kernels_supported_devices():
        fast = {"fused": True}
    lr: float | torch.Tensor = o.lr
    if capturable or (config.train.cuda_graphs and device.type == "cuda"):
        lr = torch.tensor(o.lr, dtype=torch.float32, device=device)
        if o.name != "sgd":
            fast["capturable"] = True
    if o.name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=o.weight_decay, **fast)
    if o.name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=o.weight_decay, **fast)
    return torch.optim.SGD(params, lr=lr, momentum=o.momentum, nesterov=o.momentum > 0,
                           weight_decay=o.weight_decay, **fast)


def poly_schedule(optimizer: torch.optim.Optimizer, total_steps: int, power: float
                  ) -> torch.optim.lr_scheduler.PolynomialLR:
    """lr = base * (1 - step / total) ** power (torch's PolynomialLR; 0 after ``total_steps``)."""
    return torch.optim.lr_scheduler.PolynomialLR(optimizer, total_iters=max(total_steps, 1), power=power)


def select_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device: 'cuda' requested but no CUDA device is available")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def amp_dtype_for(config: Config, device: torch.device) -> torch.dtype | None:
    if device.type != "cuda" or config.train.amp == "none":
        return None
    return torch.bfloat16 if config.train.amp == "bf16" else torch.float16
