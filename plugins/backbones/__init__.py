"""Built-in backbones."""

from __future__ import annotations

from prism.registry import hookimpl

from .multi_unet import MultiEncoderUNet


@hookimpl
def register_backbones(register):
    register("multi_unet", MultiEncoderUNet)
