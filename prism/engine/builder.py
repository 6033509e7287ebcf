"""Build a run's parts from a validated config through the registry; every mistake names its config field."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.optim.optimizer import _get_fused_kernels_supported_devices

from ..backbone import Backbone
from ..config import Config
from ..errors import ConfigError, PluginError
from ..masking import MaskingPolicy
from ..registry import describe, get_registry
from ..runs import amp_dtype_for, select_device
from ..seams import check_provides_needs
from ..strategy import Strategy
from .losses import LossSet, WeightedTerm

#: the building functions (device and autocast choice come from prism.runs, which loading a run shares)
__all__ = ["Parts", "build_parts", "build_optimizer", "poly_schedule", "select_device", "amp_dtype_for"]

logger = logging.getLogger(__name__)


@dataclass
class Parts:
    model: Backbone
    losses: LossSet
    masking: dict[str, MaskingPolicy]
    strategy: Strategy


def split_missing_rates(availability: Sequence[Sequence[bool]], modalities: tuple[str, ...], field: str
                        ) -> dict[str, float]:
    """Each modality's missing rate in a split: ``1 - (cases with it) / (cases)``, by name.

    PASSION's ``modal_weight`` (``iter_per_epoch / modal_num`` from its split CSV; Jun-Jie-Shi/PASSION,
    code/train.py) is ``1 / (1 - rate)`` of these.

    Args:
        availability: one row of M booleans per training case; modalities: their names; field: the config field,
            named in errors.
    Returns:
        ``{modality: rate}``.
    Raises:
        ConfigError: no cases, rows of the wrong length, or a modality available in no case (its weight would be
            infinite).
    """
    rows = [tuple(bool(v) for v in row) for row in availability]
    if not rows or any(len(r) != len(modalities) for r in rows):
        raise ConfigError(f"{field}: from_split needs the training split's availability ({len(rows)} cases of "
                          f"{len(modalities)} modalities)")
    counts = [sum(r[i] for r in rows) for i in range(len(modalities))]
    never = [m for m, c in zip(modalities, counts, strict=True) if c == 0]
    if never:
        raise ConfigError(f"{field}: from_split: modality {', '.join(never)} is available in none of the "
                          f"{len(rows)} training cases")
    return {m: 1.0 - c / len(rows) for m, c in zip(modalities, counts, strict=True)}


def _resolved_options(options: dict[str, Any], field: str, modalities: tuple[str, ...],
                      availability: Sequence[Sequence[bool]] | None) -> dict[str, Any]:
    """The loss options with ``missing_rates: from_split`` replaced by the training split's rates."""
    if options.get("missing_rates") != "from_split":
        return options
    if availability is None:
        raise ConfigError(f"{field}.missing_rates: from_split needs the training split's availability, which only "
                          "a run built from a cache has")
    rates = split_missing_rates(availability, modalities, f"{field}.missing_rates")
    logger.info("%s.missing_rates from the training split (%d cases): %s", field, len(availability),
                ", ".join(f"{m} {r:.4f}" for m, r in rates.items()))
    return {**options, "missing_rates": rates}


def build_parts(config: Config, modalities: tuple[str, ...], num_classes: int, *,
                availability: Sequence[Sequence[bool]] | None = None) -> Parts:
    """The run's plugins built through the registry from ``config`` (options checked first, every mistake naming
    its config field); the loss set knows which plugins built the backbone and each term, so that the first
    step's seam checks name the one that breaks its contract.

    Args:
        config: the validated run config.
        modalities: the dataset's modality names; num_classes: K.
        availability: the training cases' availability (one row of M booleans each), which
            ``missing_rates: from_split`` reads; None where there is no training split.
    Returns:
        The parts.
    Raises:
        PluginError: an unknown plugin or option, a backbone that is not a prism Backbone, or a loss that needs
            SegOutput parts the backbone does not provide.
        ConfigError: ``data.patch_size`` does not fit the backbone's ``size_divisor``, or ``from_split`` cannot
            be resolved.
    """
    reg = get_registry()
    model = reg.build("backbone", config.model.name, (modalities, num_classes), config.model.options,
                      field="model.name")
    backbone = reg.get("backbone", config.model.name)
    if not isinstance(model, Backbone):
        raise PluginError(f"model.name: {describe(backbone)} did not build a prism Backbone "
                          f"(got {type(model).__name__})")
    terms = []
    for i, choice in enumerate(config.losses):
        options = _resolved_options(dict(choice.options), f"losses.{i}.options", modalities, availability)
        term = reg.build("loss", choice.name, (modalities, num_classes), options, field=f"losses.{i}.name")
        # the built term's needs: options may add parts (prism's separate=true reads RFNet's 'sep')
        check_provides_needs(config.model.name, type(model).provides, choice.name, term.needs)
        terms.append(WeightedTerm(choice.name, choice.weight, term, entry=reg.get("loss", choice.name)))
    masking = {"train": reg.build("masking", config.masking.train.name, (modalities,), config.masking.train.options,
                                  field="masking.train.name")}
    for role, choice in config.masking.extra.items():
        masking[role] = reg.build("masking", choice.name, (modalities,), choice.options,
                                  field=f"masking.extra.{role}.name")
    model.request_parts(frozenset().union(*(t.term.needs for t in terms)))
    strategy = reg.build("strategy", config.strategy.name, (), config.strategy.options, field="strategy.name")
    bad = [s for s in config.data.patch_size if s % model.size_divisor]
    if bad:
        raise ConfigError(f"data.patch_size: {list(config.data.patch_size)} must be multiples of "
                          f"{model.size_divisor} for backbone '{config.model.name}'")
    losses = LossSet(terms, backbone=backbone, num_classes=num_classes, num_modalities=len(modalities))
    scheduled = losses.epoch_scheduled()
    if scheduled and config.train.steps < config.train.epoch_length:
        logger.warning("train.steps=%d is shorter than one epoch (train.epoch_length=%d): loss %s never reaches an "
                       "epoch end, so its preference coefficients keep their initial values",
                       config.train.steps, config.train.epoch_length, ", ".join(repr(n) for n in scheduled))
    return Parts(model=model, losses=losses, masking=masking, strategy=strategy)


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
