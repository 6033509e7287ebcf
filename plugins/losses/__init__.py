"""Built-in losses: plain functions on tensors (import and call them anywhere) and registered terms.

>>> from prism.plugins.losses import dice_ce_loss, pixel_kl_loss
>>> loss = dice_ce_loss(logits, labels)
>>> kl = pixel_kl_loss(uni_logits, fused_logits, mask)  # sum over available modalities, batch mean

Registered terms (name: SegOutput parts needed): fuse (logits), uni (uni), prm (deep), pixel_kl (logits, uni),
proto_l2 (features, uni_features), gss (uni), prism (all six, plus RFNet's extra parts ``sep`` with
``separate=true``, ``region0`` with ``prm_region0`` and ``uni_region0`` with the pixel KL's ``region0_weight``:
the seeds' total objective, or PASSION's with the options the ``passion_brats2020_mr2468`` preset selects). Every
option is typed, bounded and described once in ``options``, which the registry validates against. The
backbone-specific terms ``rfnet_sep`` (``sep``), ``shaspec_domain`` (``domain_logits``)
and ``shaspec_consistency`` (``shared``) are registered with the backbones.

Every term of a step shares the batch's one-hot labels per decoder level (``targets_for``), and each level's
predictions are scored in one batched call (``SegLossOptions.per_path``, ``level_losses``).
"""

from __future__ import annotations

from prism.registry import hookimpl

from .deep_supervision import (
    deep_supervision_loss,
    level_losses,
    prm_loss,
    reduce_modalities,
    resample_labels,
    uni_loss,
    upsample_probs,
)
from .distillation import PIXEL_KL_VARIANTS, kl_map, kl_probs, pixel_kl_loss
from .errors import LossOptionError
from .gss import gss_loss, gss_teacher
from .preference import (
    PreferenceRegulariser,
    batch_preference_gate,
    initial_coefficients,
    preference_gate,
    project_coefficients,
    relative_preference,
)
from .prototypes import PROTO_VARIANTS, class_prototypes, proto_gap, proto_l2_loss, similarity_maps
from .segmentation import SegLossOptions, cross_entropy_loss, dice_ce_loss, soft_dice_loss
from .targets import Targets, onehot_labels, targets_for
from .terms import FuseLoss, GssLoss, PixelKLLoss, PrmLoss, ProtoL2Loss, UniLoss
from .total import PrismLoss

__all__ = [
    "cross_entropy_loss", "dice_ce_loss", "soft_dice_loss", "SegLossOptions",
    "resample_labels", "deep_supervision_loss", "level_losses", "upsample_probs", "LossOptionError",
    "Targets", "onehot_labels", "targets_for", "prm_loss", "uni_loss", "reduce_modalities",
    "kl_map", "kl_probs", "pixel_kl_loss", "PIXEL_KL_VARIANTS",
    "class_prototypes", "similarity_maps", "proto_gap", "proto_l2_loss", "PROTO_VARIANTS",
    "gss_teacher", "gss_loss",
    "relative_preference", "preference_gate", "batch_preference_gate", "initial_coefficients", "project_coefficients",
    "PreferenceRegulariser",
    "FuseLoss", "UniLoss", "PrmLoss", "PixelKLLoss", "ProtoL2Loss", "GssLoss", "PrismLoss",
]

TERMS = {"fuse": FuseLoss, "uni": UniLoss, "prm": PrmLoss, "pixel_kl": PixelKLLoss, "proto_l2": ProtoL2Loss,
         "gss": GssLoss, "prism": PrismLoss}


@hookimpl
def register_losses(register):
    for name, factory in TERMS.items():
        register(name, factory)
