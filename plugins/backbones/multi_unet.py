"""A multi-encoder 3D U-Net: one encoder per modality, masked fusion of the available ones, one decoder."""

from __future__ import annotations

import torch
from torch import nn

from prism.backbone import Backbone
from prism.outputs import SegOutput

from .blocks import ConvBlock, masked_mean
from .options import Depth, UniInEval, Width


class MultiEncoderUNet(Backbone):
    """Multi-encoder U-Net with masked-mean fusion and a shared decoder (fused and per-modality in one pass).

    The M modality encoders run as one grouped convolution (``groups=M``). At every level the features of the
    available modalities are averaged (missing ones excluded by the mask, their inputs zeroed). In train mode
    the decoder runs once on the fused features and the M per-modality features stacked along the batch, giving
    ``logits``, ``deep``, ``uni``, ``uni_deep``, ``features`` and ``uni_features``. The per-modality paths run
    only when a loss needs them (``request_parts``); in eval mode only the fused path runs, unless ``uni_in_eval``.
    """

    provides = frozenset({"logits", "deep", "uni", "uni_deep", "features", "uni_features"})

    def __init__(self, modalities: tuple[str, ...], num_classes: int, *, width: Width = 8, depth: Depth = 4,
                 uni_in_eval: UniInEval = False) -> None:
        super().__init__(modalities, num_classes)
        m = self.num_modalities
        self.width, self.depth, self.uni_in_eval = width, depth, uni_in_eval
        self.size_divisor = 2 ** (depth - 1)
        chans = [width * 2**level for level in range(depth)]
        self.encoders = nn.ModuleList(
            ConvBlock(m * (chans[lv - 1] if lv else 1), m * chans[lv], stride=1 if lv == 0 else 2, groups=m)
            for lv in range(depth)
        )
        self.ups = nn.ModuleList(
            nn.ConvTranspose3d(chans[lv + 1], chans[lv], 2, stride=2, bias=False) for lv in range(depth - 1)
        )
        self.decoders = nn.ModuleList(ConvBlock(2 * chans[lv], chans[lv]) for lv in range(depth - 1))
        self.heads = nn.ModuleList(nn.Conv3d(chans[lv], num_classes, 1) for lv in range(depth - 1))

    def _decode(self, skips: list[torch.Tensor], deep: bool = True) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Decoder over per-level skips: logits per level (finest first; level 0 only unless ``deep``) and
        the decoder features per level (coarsest first)."""
        y = skips[-1]
        levels: list[torch.Tensor] = []
        feats: list[torch.Tensor] = []
        for lv in reversed(range(self.depth - 1)):
            y = self.decoders[lv](torch.cat([self.ups[lv](y), skips[lv]], dim=1))
            if deep or lv == 0:
                levels.append(self.heads[lv](y))
            feats.append(y)
        levels.reverse()
        return levels, feats

    def combination_logits(self, image: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """Fused logits ``[B, C, K, ...]`` under every mask of ``masks [C, M]``, each encoder run once.

        The modality encoders are independent until fusion and a masked-out modality is excluded from every
        fused mean, so the encoders run once on the unmasked image and only fusion and the decoder run per
        combination (about 4x less work than a forward per combination). Equals ``forward`` under each mask.
        """
        self.check_input(image, torch.ones(image.shape[:2], dtype=torch.bool, device=image.device))
        b, m = image.shape[:2]
        c = masks.shape[0]
        weight = masks.to(device=image.device, dtype=image.dtype)  # [C, M]
        count = weight.sum(1).clamp_min(1.0)
        x = image
        skips = []
        for encoder in self.encoders:
            x = encoder(x)
            per_modality = x.unflatten(1, (m, -1))  # [B, M, ch, ...]
            fused = torch.einsum("cm,bm...->bc...", weight, per_modality)
            fused = fused / count.view(1, c, *([1] * (per_modality.dim() - 2)))
            skips.append(fused.flatten(0, 1))  # [B * C, ch, ...]
        levels, _ = self._decode(skips, deep=False)
        return levels[0].unflatten(0, (b, c))

    def forward(self, image: torch.Tensor, mask: torch.Tensor) -> SegOutput:
        self.check_input(image, mask)
        b, m = mask.shape
        mask = mask.to(image.device)
        x = image * mask[:, :, None, None, None].to(image.dtype)  # masked-out content never enters
        uni_parts = {"uni", "uni_deep", "uni_features"}
        with_uni = bool(self.requested & uni_parts) if self.training else self.uni_in_eval
        skips = []
        for encoder in self.encoders:
            x = encoder(x)
            per_modality = x.unflatten(1, (m, -1))  # [B, M, C, ...]
            fused = masked_mean(per_modality, mask)
            if with_uni:  # stack fused and per-modality paths: [(1 + M) * B, C, ...]
                stacked = torch.cat([fused.unsqueeze(1), per_modality], dim=1).transpose(0, 1).flatten(0, 1)
            else:
                stacked = fused
            skips.append(stacked)
        levels, feats = self._decode(skips)
        paths = 1 + m if with_uni else 1

        def split(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
            t = t.unflatten(0, (paths, b))
            return t[0], (t[1:].transpose(0, 1) if with_uni else None)

        logits, uni = split(levels[0])
        deep_pairs = [split(t) for t in levels[1:]]
        features, uni_features = split(feats[-1])
        return SegOutput(
            logits=logits,
            deep=[d for d, _ in deep_pairs],
            uni=uni,
            uni_deep=[u for _, u in deep_pairs] if with_uni else None,
            features=features,
            uni_features=uni_features,
        )
