"""Meta-transfer learning (Sun et al., CVPR 2019) on any registered backbone."""

from __future__ import annotations

from prism.backbone import Backbone

from .channel_affine import add_scale_shift
from .maml import MAML


class MetaTransfer(MAML):
    """Meta-transfer learning: a trained backbone's weights frozen, per-channel scale and shift learned for every
    convolution, meta-trained episodically with the head.

    Start from a trained run (``model.init_from``, ``prism-train --init-from RUN``). ``prepare_model`` freezes
    every weight except the head (``Backbone.head_parameter_names``) and attaches to each convolution a scale
    (init 1) and shift (init 0) per output channel: ``SS(X) = (W * scale) X + (b + shift)``. Only those and the
    head are trained. Episodes are MAML's (combination or site tasks, support and query from disjoint cases):
    the inner loop adapts ``adapt_params`` of the trainable parameters (default: all of them, i.e. scale/shift
    and head; ``head`` adapts the head alone, as in the paper's inner loop) and the outer optimizer updates the
    scale/shift parameters and the head's initialisation. ``adapt`` updates only those parameters.

    Options: those of ``maml`` (``inner_steps``, ``inner_lr``, ``first_order``, ``tasks_per_step``, ``tasks``,
    ``backend``, ``adapt_params``; ``learn_inner_lr`` for Meta-SGD rates on them). The paper's "hard task"
    re-sampling of the worst classes is not implemented.
    """

    def prepare_model(self, model: Backbone) -> Backbone:
        head = set(model.head_parameter_names())
        for name, param in model.named_parameters():
            param.requires_grad_(name in head)
        add_scale_shift(model)
        return model
