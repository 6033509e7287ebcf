"""ShaSpec's auxiliary objectives: domain classification of the specific features, consistency of the shared ones.

Plain functions on tensors (reusable anywhere) and the registered terms ``shaspec_domain`` and
``shaspec_consistency`` that read a ``ShaSpecOutput``.
"""

from __future__ import annotations

from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from prism.batch import Batch
from prism.errors import PluginError
from prism.loss import LossResult, LossTerm
from prism.outputs import SegOutput
from prism.plugins.losses.options import TermWeight

Distance = Literal["l1", "l2"]
DistanceOption = Annotated[Distance, Field(
    description="how far apart the shared features of two available modalities are: mean absolute ('l1') or "
                "squared ('l2') difference")]


class ShaSpecOutputError(PluginError, ValueError):
    """A ``shaspec_*`` loss term got an output without the field it reads."""


def domain_classification_loss(domain_logits: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy of each available modality's domain logits against its own modality index.

    Args:
        domain_logits: ``[B, M, M]``; entry ``[b, m]`` classifies modality m's specific features of sample b.
        mask: ``[B, M]`` bool, available modalities.
    Returns:
        ``(mean over available (sample, modality) pairs, per-modality mean [M])``; a modality available in no
        sample contributes 0.
    Raises:
        ValueError: shapes that do not match.
    """
    b, m = mask.shape
    if domain_logits.shape != (b, m, m):
        raise ValueError(f"domain logits must be [B, M, M] = [{b}, {m}, {m}], got {tuple(domain_logits.shape)}")
    target = torch.arange(m, device=domain_logits.device).expand(b, m)
    ce = F.cross_entropy(domain_logits.float().flatten(0, 1), target.flatten(), reduction="none").view(b, m)
    weight = mask.to(ce.dtype)
    total = (ce * weight).sum() / weight.sum().clamp_min(1.0)
    per_modality = (ce * weight).sum(0) / weight.sum(0).clamp_min(1.0)
    return total, per_modality


def shared_consistency_loss(shared: torch.Tensor, mask: torch.Tensor, distance: Distance = "l1") -> torch.Tensor:
    """Mean distance between the shared features of every pair of modalities available in the same sample.

    For each sample and each unordered pair ``i < j`` of available modalities, the mean absolute (``l1``) or
    squared (``l2``) difference over channels and voxels.

    Args:
        shared: ``[B, M, C, *spatial]`` shared-encoder features; mask: ``[B, M]`` bool; distance: ``l1``/``l2``.
    Returns:
        A scalar: the mean over all such (sample, pair) entries in the batch, 0 when there is none.
    Raises:
        ValueError: shapes that do not match or an unknown distance.
    """
    if distance not in ("l1", "l2"):
        raise ValueError(f"distance must be 'l1' or 'l2', got {distance!r}")
    b, m = mask.shape
    if shared.shape[:2] != (b, m):
        raise ValueError(f"shared features must be [B, M, ...] = [{b}, {m}, ...], got {tuple(shared.shape)}")
    i, j = torch.triu_indices(m, m, offset=1, device=shared.device)
    diff = (shared[:, i] - shared[:, j]).float().flatten(2)  # [B, P, C * V]
    dist = (diff.abs() if distance == "l1" else diff.square()).mean(-1)  # [B, P]
    valid = (mask[:, i] & mask[:, j]).to(dist.dtype)
    return (dist * valid).sum() / valid.sum().clamp_min(1.0)


def _field(output: SegOutput, name: str, term: str) -> torch.Tensor:
    value = output.part(name)
    if value is None:
        raise ShaSpecOutputError(f"loss '{term}' needs the '{name}' field of backbone 'shaspec' "
                                 f"({type(output).__name__} has none)")
    return value


class ShaSpecDomainLoss(LossTerm):
    """ShaSpec's domain classification objective: each specific feature must tell which modality it came from.

    Classes are the modality names in the backbone's (= the dataset's) order; only available modalities count.
    """

    needs = frozenset({"domain_logits"})

    def __init__(self, modalities: tuple[str, ...], num_classes: int, *, weight: TermWeight = 1.0) -> None:
        super().__init__(modalities, num_classes)
        self.weight = float(weight)

    def __call__(self, output: SegOutput, batch: Batch) -> LossResult:
        logits = _field(output, "domain_logits", "shaspec_domain")
        if logits.shape[-1] != len(self.modalities):
            raise ShaSpecOutputError(f"loss 'shaspec_domain': domain logits have {logits.shape[-1]} classes for "
                                     f"modalities {list(self.modalities)}")
        total, per = domain_classification_loss(logits, batch.mask.to(logits.device))
        parts = {"shaspec_domain": total.detach()}
        parts.update({f"shaspec_domain/{name}": per[k].detach() for k, name in enumerate(self.modalities)})
        return LossResult(self.weight * total, parts)


class ShaSpecConsistencyLoss(LossTerm):
    """ShaSpec's shared-feature alignment: the shared features of available modalities should agree."""

    needs = frozenset({"shared"})

    def __init__(self, modalities: tuple[str, ...], num_classes: int, *, weight: TermWeight = 1.0,
                 distance: DistanceOption = "l1") -> None:
        super().__init__(modalities, num_classes)
        if distance not in ("l1", "l2"):
            raise ShaSpecOutputError(f"shaspec_consistency: distance must be 'l1' or 'l2', got {distance!r}")
        self.weight = float(weight)
        self.distance: Distance = distance

    def __call__(self, output: SegOutput, batch: Batch) -> LossResult:
        shared = _field(output, "shared", "shaspec_consistency")
        total = shared_consistency_loss(shared, batch.mask.to(shared.device), self.distance)
        return LossResult(self.weight * total, {"shaspec_consistency": total.detach()})
