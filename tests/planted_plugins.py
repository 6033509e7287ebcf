"""A third party's plugin package with planted mistakes, installed as its own distribution (``prism-planted``) for
the seam tests: each plugin breaks one contract, or raises, in a way a plugin author could.

``install(site)`` writes the package and its dist-info (one distribution, an entry point per kind) into ``site``;
put ``site`` on ``sys.path`` (or ``PYTHONPATH``) and reset the registry to load it.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

DISTRIBUTION = "prism-planted"
VERSION = "0.2.0"

SOURCE = '''
"""prism-planted: plugins that each break one of prism's contracts."""
from typing import Annotated

import numpy as np
import torch
from pydantic import Field
from torch import nn

from prism.backbone import Backbone
from prism.errors import ConfigError
from prism.loss import LossResult, LossTerm
from prism.masking import MaskingPolicy
from prism.outputs import SegOutput
from prism.registry import hookimpl
from prism.strategy import Strategy


class PlantedOptionError(ConfigError):
    """A third party's error class with a constructor of its own."""

    def __init__(self, option, value):
        super().__init__(f"{option}={value!r} is not allowed here")
        self.option, self.value = option, value


# ---- backbones -------------------------------------------------------------------------------------------------

class GoodNet(Backbone):
    """Keeps the contract; its options are named like prism's own words."""

    provides = frozenset({"logits", "uni"})

    def __init__(self, modalities, num_classes, *, kind: str = "plain", name: str = "net",
                 field_name: Annotated[int, Field(ge=1)] = 4, mode: str = "good"):
        super().__init__(modalities, num_classes)
        self.kind, self.name, self.mode = kind, name, mode
        self.conv = nn.Conv3d(1, field_name, 3, padding=1)
        self.head = nn.Conv3d(field_name, num_classes, 1)

    def forward(self, image, mask):
        self.check_input(image, mask)
        b, m = image.shape[:2]
        feats = self.conv(image.reshape(b * m, 1, *image.shape[2:])).reshape(b, m, -1, *image.shape[2:])
        w = mask.to(feats.dtype)[:, :, None, None, None, None]
        out = SegOutput(logits=self.head((feats * w).sum(1) / w.sum(1).clamp(min=1)))
        if self.mode == "raises" or (self.mode == "raises_in_eval" and not self.training):
            raise RuntimeError("planted failure inside the backbone's forward")
        if self.mode == "tensor":
            return out.logits
        if self.mode == "wrong_shape":
            return SegOutput(logits=out.logits[:, :1])
        if self.mode == "nan":
            return SegOutput(logits=out.logits * float("nan"))
        if self.mode != "no_uni" and self.training and "uni" in self.requested:
            out.uni = self.head(feats.flatten(0, 1)).unflatten(0, (b, m))
        return out


# ---- loss terms ------------------------------------------------------------------------------------------------

class PlantedLoss(LossTerm):
    """Cross-entropy of the fused logits, or a planted mistake (``mode``)."""

    def __init__(self, modalities, num_classes, *, mode: str = "good", strictness: int = 1):
        super().__init__(modalities, num_classes)
        if strictness > 3:
            raise PlantedOptionError("strictness", strictness)
        self.mode = mode

    def __call__(self, output, batch):
        total = nn.functional.cross_entropy(output.logits.float(), batch.label)
        if self.mode == "raises":
            raise ValueError("planted failure inside the loss")
        if self.mode == "float":
            return LossResult(total=float(total))
        if self.mode == "vector":
            return LossResult(total=total * torch.ones(batch.label.shape[0]))
        if self.mode == "nan":
            return LossResult(total=total * float("nan"))
        return LossResult(total=total, parts={"planted": total.detach()})

    def state_dict(self):
        return {"seen": np.zeros(2)} if self.mode == "numpy_state" else {}


class NeedsUni(PlantedLoss):
    """Reads the per-modality logits."""

    needs = frozenset({"uni"})

    def __call__(self, output, batch):
        total = output.uni.float().mean() * 0 + nn.functional.cross_entropy(output.logits.float(), batch.label)
        return LossResult(total=total)


# ---- masking policies ------------------------------------------------------------------------------------------

class PlantedPolicy(MaskingPolicy):
    """Every available modality, or a planted mistake (``mode``)."""

    def __init__(self, modalities, *, mode: str = "good"):
        super().__init__(modalities)
        self.mode = mode

    def __call__(self, availability, generator):
        if self.mode == "all_off":
            return torch.zeros_like(availability, dtype=torch.bool)
        if self.mode == "absent_on":
            return torch.ones_like(availability, dtype=torch.bool)
        if self.mode == "float":
            return availability.float()
        if self.mode == "wide":
            return torch.cat([availability, availability[:, :1]], 1)
        if self.mode == "raises":
            raise IndexError("planted failure inside the masking policy")
        return availability.clone()

    def state_dict(self):
        return {"policy": object()} if self.mode == "object_state" else {}


# ---- strategies ------------------------------------------------------------------------------------------------

class PlantedStrategy(Strategy):
    """A standard step whose return value or state is a planted mistake (``returns``, ``state``)."""

    def __init__(self, *, returns: str = "dict", state: str = "good", strictness: int = 1):
        if strictness > 3:
            raise ConfigError(f"strictness: at most 3, got {strictness}")
        self.returns, self.state = returns, state

    def step(self, ctx):
        batch = ctx.next_batch("train")
        ctx.zero_grad()
        loss, parts = ctx.compute_loss(batch)
        ctx.backward(loss)
        ctx.optimizer_step()
        return {"dict": parts, "tensor": parts["loss"], "float": float(parts["loss"]), "none": None,
                "list": [parts["loss"]], "no_loss": {"total": parts["loss"]}}[self.returns]

    def state_dict(self):
        return {"numbers": np.arange(3)} if self.state == "numpy" else {}


def _factory(cls, **fixed):
    def build(*args, **options):
        return cls(*args, **fixed, **options)
    build.__doc__ = cls.__doc__
    build.provides = getattr(cls, "provides", frozenset())
    build.needs = getattr(cls, "needs", frozenset())
    return build


@hookimpl
def register_backbones(register):
    register("planted_net", GoodNet)
    for mode in ("raises", "raises_in_eval", "tensor", "wrong_shape", "nan", "no_uni"):
        register(f"planted_net_{mode}", _factory(GoodNet, mode=mode))


@hookimpl
def register_losses(register):
    register("planted_loss", PlantedLoss)
    register("planted_needs_uni", NeedsUni)
    for mode in ("raises", "float", "vector", "nan", "numpy_state"):
        register(f"planted_loss_{mode}", _factory(PlantedLoss, mode=mode))


@hookimpl
def register_masking_policies(register):
    for mode in ("all_off", "absent_on", "float", "wide", "raises", "object_state"):
        register(f"planted_mask_{mode}", _factory(PlantedPolicy, mode=mode))


@hookimpl
def register_strategies(register):
    register("planted_strategy", PlantedStrategy)
    for returns in ("tensor", "float", "none", "list", "no_loss"):
        register(f"planted_returns_{returns}", _factory(PlantedStrategy, returns=returns))
    register("planted_state_numpy", _factory(PlantedStrategy, state="numpy"))
'''

#: one distribution, an entry point (module) per kind: entry point name -> (module, hook it exposes)
ENTRY_POINTS = {
    "planted_backbones": ("backbones", "register_backbones"),
    "planted_losses": ("losses", "register_losses"),
    "planted_masking": ("masking", "register_masking_policies"),
    "planted_strategies": ("strategies", "register_strategies"),
}


def install(site: Path) -> Path:
    """Write the ``prism_planted`` package and the ``prism-planted`` dist-info into ``site``; returns ``site``."""
    package = site / "prism_planted"
    package.mkdir(parents=True, exist_ok=True)
    (package / "__init__.py").write_text('"""prism-planted."""\n')
    (package / "core.py").write_text(textwrap.dedent(SOURCE))
    for module, hook in ENTRY_POINTS.values():
        (package / f"{module}.py").write_text(f"from .core import {hook}  # noqa: F401\n")
    info = site / f"prism_planted-{VERSION}.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {DISTRIBUTION}\nVersion: {VERSION}\n")
    (info / "entry_points.txt").write_text("[prism]\n" + "".join(
        f"{name} = prism_planted.{module}\n" for name, (module, _) in ENTRY_POINTS.items()))
    return site
