"""Built-in backbones."""

from __future__ import annotations

from prism.registry import hookimpl

from .aux_losses import RFNetSeparateLoss
from .m2ftrans import M2FTrans
from .mmformer import MMFormer
from .multi_unet import MultiEncoderUNet
from .rfnet import RFNet
from .unet import EarlyFusionUNet


@hookimpl
def register_backbones(register):
    register("multi_unet", MultiEncoderUNet)
    register("rfnet", RFNet)
    register("unet", EarlyFusionUNet)
    register("mmformer", MMFormer)
    register("m2ftrans", M2FTrans)


@hookimpl
def register_losses(register):
    register("rfnet_sep", RFNetSeparateLoss)
