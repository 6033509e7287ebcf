"""Built-in backbones."""

from __future__ import annotations

from prism.registry import hookimpl

from .aux_losses import RFNetSeparateLoss
from .m2ftrans import M2FTrans
from .mmformer import MMFormer
from .multi_unet import MultiEncoderUNet
from .rfnet import RFNet
from .shaspec import ShaSpec
from .shaspec_losses import ShaSpecConsistencyLoss, ShaSpecDomainLoss
from .unet import EarlyFusionUNet


@hookimpl
def register_backbones(register):
    register("multi_unet", MultiEncoderUNet)
    register("rfnet", RFNet)
    register("unet", EarlyFusionUNet)
    register("mmformer", MMFormer)
    register("m2ftrans", M2FTrans)
    register("shaspec", ShaSpec)


@hookimpl
def register_losses(register):
    register("rfnet_sep", RFNetSeparateLoss)
    register("shaspec_domain", ShaSpecDomainLoss)
    register("shaspec_consistency", ShaSpecConsistencyLoss)
