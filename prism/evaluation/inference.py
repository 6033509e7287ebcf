"""Whole-volume inference for every modality combination of a case, in batched passes."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..backbone import Backbone


@torch.no_grad()
def predict_combinations(model: Backbone, image: torch.Tensor, masks: torch.Tensor, *, device: torch.device,
                         amp_dtype: torch.dtype | None = None, combos_per_pass: int = 15,
                         channels_last: bool = False) -> torch.Tensor:
    """Label maps ``[C, D, H, W]`` for image ``[M, D, H, W]`` under each mask of ``masks`` ``[C, M]``.

    The combinations run as the batch dimension, ``combos_per_pass`` at a time; the volume is zero-padded to the
    backbone's size divisor and the padding cropped from the result.
    """
    model.eval()
    spatial = image.shape[1:]
    div = model.size_divisor
    pad = [(-s) % div for s in spatial]
    x = image.to(device, non_blocking=True)
    if any(pad):
        x = F.pad(x, (0, pad[2], 0, pad[1], 0, pad[0]))
    out = []
    for start in range(0, masks.shape[0], combos_per_pass):
        m = masks[start:start + combos_per_pass].to(device)
        xb = x.unsqueeze(0) * m[:, :, None, None, None].to(x.dtype)
        if channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last_3d)
        if amp_dtype is not None:
            with torch.autocast(device.type, dtype=amp_dtype):
                logits = model(xb, m).logits
        else:
            logits = model(xb, m).logits
        out.append(logits.argmax(1)[:, : spatial[0], : spatial[1], : spatial[2]].to(torch.uint8).cpu())
    return torch.cat(out)
