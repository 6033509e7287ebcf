"""The Batch every strategy, backbone and loss meets at."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch


@dataclass
class Batch:
    """A training or evaluation batch.

    image: float ``[B, M, D, H, W]``; missing channels hold zeros, but the mask, not the zeros, says what is missing.
    label: int64 ``[B, D, H, W]``.
    mask: bool ``[B, M]``, the modalities the model may use in this step (True = available).
    availability: bool ``[B, M]``, what exists on disk for each case (the masking policy draws within it).
    case_ids: the cases the samples come from.
    """

    image: torch.Tensor
    label: torch.Tensor
    mask: torch.Tensor
    availability: torch.Tensor
    case_ids: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        b, m = self.image.shape[:2]
        if self.image.dim() != 5:
            raise ValueError(f"Batch.image must be [B, M, D, H, W], got {tuple(self.image.shape)}")
        if tuple(self.label.shape) != (b, *self.image.shape[2:]):
            raise ValueError(f"Batch.label {tuple(self.label.shape)} does not match image {tuple(self.image.shape)}")
        for name in ("mask", "availability"):
            t = getattr(self, name)
            if tuple(t.shape) != (b, m) or t.dtype != torch.bool:
                raise ValueError(f"Batch.{name} must be a bool tensor [{b}, {m}], got {t.dtype} {tuple(t.shape)}")

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        return replace(
            self,
            image=self.image.to(device, non_blocking=non_blocking),
            label=self.label.to(device, non_blocking=non_blocking),
            mask=self.mask.to(device, non_blocking=non_blocking),
            availability=self.availability.to(device, non_blocking=non_blocking),
        )

    def pin_memory(self) -> Batch:
        """Called by DataLoader(pin_memory=True)."""
        return replace(
            self,
            image=self.image.pin_memory(),
            label=self.label.pin_memory(),
            mask=self.mask.pin_memory(),
            availability=self.availability.pin_memory(),
        )

    def with_mask(self, mask: torch.Tensor) -> Batch:
        """The same batch under another modality mask, with the newly missing channels zeroed.

        A mask drawn on the host is copied to a CUDA batch from pinned memory without blocking: a copy from
        pageable memory would make the host wait for the device.
        """
        if mask.shape != self.mask.shape:
            raise ValueError(f"mask shape {tuple(mask.shape)} != {tuple(self.mask.shape)}")
        if mask.device != self.image.device:
            if self.image.device.type == "cuda" and mask.device.type == "cpu":
                mask = mask.pin_memory().to(self.image.device, non_blocking=True)
            else:
                mask = mask.to(self.image.device)
        image = self.image * mask[:, :, None, None, None].to(self.image.dtype)
        return replace(self, image=image, mask=mask)

    @property
    def size(self) -> int:
        return int(self.image.shape[0])
