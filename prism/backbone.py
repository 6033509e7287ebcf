"""The Backbone contract: a module mapping (image, mask) to a SegOutput."""

from __future__ import annotations

import fnmatch
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
    #: glob patterns naming the head's parameters (see ``head_parameter_names``); empty: found by shape
    head_patterns: ClassVar[tuple[str, ...]] = ()

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

    def head_parameter_names(self) -> list[str]:
        """Names of the segmentation head's parameters (the fused, per-modality and deep-supervision classifiers).
        ANIL-style adaptation updates only these, BOIL-style everything else.

        A backbone names them with ``head_patterns`` (globs over parameter names); without patterns, every 1x1x1
        convolution that maps to ``num_classes`` channels counts as head."""
        if self.head_patterns:
            return [n for n, _ in self.named_parameters()
                    if any(fnmatch.fnmatchcase(n, pattern) for pattern in self.head_patterns)]
        names = []
        for prefix, module in self.named_modules():
            if (isinstance(module, nn.modules.conv._ConvNd) and module.out_channels == self.num_classes
                    and all(k == 1 for k in module.kernel_size)):
                names += [f"{prefix}.{n}" if prefix else n for n, _ in module.named_parameters(recurse=False)]
        return names

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
