"""Several trained backbones as one: their softmax probabilities averaged (e.g. the K fold runs of a
cross-validation, nnU-Net's 5-fold ensemble).

:class:`Ensemble` is itself a :class:`~prism.backbone.Backbone` whose logits are the log of the members' mean
probabilities (:class:`~prism.evaluation.averaging.ProbabilityMean`), so evaluation, prediction, sliding windows
and test-time mirroring take it like any single model: its argmax is the argmax of the mean probability and its
softmax is that mean.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from ..backbone import Backbone
from ..errors import ConfigError
from ..outputs import SegOutput
from .averaging import ProbabilityMean


class Ensemble(Backbone):
    """The mean class probabilities of ``members`` (same modalities in the same order, same number of classes).

    Args:
        members: trained backbones, at least one; each keeps its own weights and efficient combination path.

    Raises:
        ConfigError: no member, or members that differ in modalities or classes.
    """

    def __init__(self, members: Sequence[Backbone]) -> None:
        if not members:
            raise ConfigError("an ensemble needs at least one run")
        first = members[0]
        for i, member in enumerate(members[1:], start=1):
            if member.modalities != first.modalities or member.num_classes != first.num_classes:
                raise ConfigError(f"ensemble member {i}: modalities {list(member.modalities)} and "
                                  f"{member.num_classes} classes differ from member 0's {list(first.modalities)} "
                                  f"and {first.num_classes}")
        super().__init__(first.modalities, first.num_classes)
        self.members = nn.ModuleList(members)
        self.size_divisor = math.lcm(*(m.size_divisor for m in members))

    def forward(self, image: torch.Tensor, mask: torch.Tensor) -> SegOutput:
        """``SegOutput(logits=log(mean_i softmax(member_i(image, mask).logits)))``, float32 ``[B, K, ...]``."""
        mean = ProbabilityMean(dim=1)
        for member in self.members:
            mean.add(member(image, mask).logits)
        return SegOutput(logits=mean.result())

    def combination_logits(self, image: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """Float32 ``[B, C, K, ...]``: the log of the members' mean probabilities under every mask of ``masks``,
        each member through its own ``combination_logits``."""
        mean = ProbabilityMean(dim=2)
        for member in self.members:
            mean.add(member.combination_logits(image, masks))
        return mean.result()
