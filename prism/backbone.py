"""The Backbone contract: a module mapping (image, mask) to a SegOutput."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from .errors import ConfigError
from .modalities import validate_modalities
from .outputs import SegOutput


class Backbone(nn.Module):
    """Base class for segmentation backbones.

    Subclasses set ``provides`` (the SegOutput parts they return in train mode) and ``size_divisor`` (every
    spatial size of the input must be a multiple of it), and implement ``forward(image, mask)``.
    The output must not depend on the content of masked-out channels.
    """

    provides: ClassVar[frozenset[str]] = frozenset({"logits"})
    size_divisor: int = 1

    def __init__(self, modalities: tuple[str, ...], num_classes: int) -> None:
        super().__init__()
        self.modalities = validate_modalities(modalities)
        if num_classes < 2:
            raise ConfigError(f"num_classes must be at least 2, got {num_classes}")
        self.num_classes = int(num_classes)
        self.requested: frozenset[str] = self.provides

    def request_parts(self, parts: frozenset[str] | set[str]) -> None:
        """Tell the backbone which optional parts the losses read in train mode, so it can skip the others."""
        self.requested = frozenset(parts) | {"logits"}

    @property
    def num_modalities(self) -> int:
        return len(self.modalities)

    def check_input(self, image: torch.Tensor, mask: torch.Tensor) -> None:
        """Raise a one-line error for an input this backbone cannot take."""
        m = self.num_modalities
        if image.dim() != 5 or image.shape[1] != m:
            raise ConfigError(f"{type(self).__name__} expects image [B, {m}, D, H, W], got {tuple(image.shape)}")
        if tuple(mask.shape) != (image.shape[0], m):
            raise ConfigError(f"{type(self).__name__} expects mask [{image.shape[0]}, {m}], got {tuple(mask.shape)}")
        bad = [s for s in image.shape[2:] if s % self.size_divisor]
        if bad:
            raise ConfigError(
                f"{type(self).__name__} needs spatial sizes divisible by {self.size_divisor}, "
                f"got {tuple(image.shape[2:])} (data.patch_size)"
            )

    def combination_logits(self, image: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """Fused logits ``[B, C, K, ...]`` of each image ``[B, M, ...]`` under every mask of ``masks [C, M]``.

        Used by evaluation to score all modality combinations in one pass. This default runs ``forward`` on the
        ``B * C`` masked copies; backbones whose modality paths are independent until fusion override it to
        run each encoder once.
        """
        b, c = image.shape[0], masks.shape[0]
        masks = masks.to(image.device)
        x = image.unsqueeze(1).expand(b, c, *image.shape[1:]).flatten(0, 1)
        mask = masks.repeat(b, 1)
        x = x * mask[:, :, None, None, None].to(x.dtype)
        if image.is_contiguous(memory_format=torch.channels_last_3d):
            x = x.contiguous(memory_format=torch.channels_last_3d)
        return self(x, mask).logits.unflatten(0, (b, c))

    def forward(self, image: torch.Tensor, mask: torch.Tensor) -> SegOutput:  # pragma: no cover - abstract
        raise NotImplementedError
