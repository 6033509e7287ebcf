"""RFNet: per-modality encoders, region-aware fusion of the available modalities, a shared per-modality decoder."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import torch
from pydantic import Field
from torch import nn

from prism.backbone import Backbone
from prism.errors import CheckpointError
from prism.outputs import SegOutput

from .blocks import (
    GroupedResidualEncoder,
    SharedDecoder,
    conv_norm_act,
    stack_modalities,
    unstack_modalities,
    up2,
    zero_missing,
)
from .options import Depth, UniInEval

UNI_PARTS = frozenset({"uni", "uni_deep", "uni_features", "uni_region0"})

#: RFNet's unit (``conv_norm_act``): a convolution with a bias, instance norm without affine parameters
#: (``general_conv3d``; Ding et al., ICCV 2021, github.com/dyh127/RFNet layers.py)
UNIT = {"bias": True, "affine": False}


def _bottleneck_stack(c_in: int, c_mid: int, c_out: int, groups: int = 1) -> nn.Sequential:
    """1x1 -> 3x3 -> 1x1 convolutions (norm + LeakyReLU after each); ``groups`` independent stacks side by side."""
    return nn.Sequential(conv_norm_act(c_in, c_mid, 1, groups=groups, **UNIT),
                         conv_norm_act(c_mid, c_mid, groups=groups, **UNIT),
                         conv_norm_act(c_mid, c_out, 1, groups=groups, **UNIT))


class RegionAwareFusion(nn.Module):
    """Fuse M modality features ``[B, M, C, ...]`` region by region under probabilistic region maps ``[B, K, ...]``.

    As RFNet builds it (``region_aware_modal_fusion`` and ``modal_fusion``; Ding et al., ICCV 2021,
    github.com/dyh127/RFNet layers.py): for each region k an MLP ``M*C + 1 -> 128 -> M`` (LeakyReLU 0.2 between)
    reads the region-pooled features of all modalities (each modality's features weighted by the region map,
    averaged over the voxels and divided by the region's mean probability) and that mean probability, and gives
    one sigmoid weight per modality; missing modalities get weight 0 (through the mask). The K region-fused
    features go through a 1x1-3x3-1x1 stack (C/2 channels) and are concatenated with a shortcut over the masked
    modality features (C/2). The K MLPs run as grouped 1x1 convolutions.

    When the two stacks have the same shape (K = M and C even, e.g. BraTS: 4 classes, 4 modalities) they run as
    one grouped stack (``groups=2``, module ``stacks``: region fusion first, shortcut second), the same function
    and parameters in half the launches.
    """

    def __init__(self, channels: int, num_modalities: int, num_classes: int, hidden: int = 128) -> None:
        super().__init__()
        k, m, c = num_classes, num_modalities, channels
        self.weight_mlp = nn.Sequential(  # K independent MLPs as grouped 1x1 convolutions
            nn.Conv1d(k * (m * c + 1), k * hidden, 1, groups=k), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv1d(k * hidden, k * m, 1, groups=k),
        )
        self.paired = k == m and c % 2 == 0
        if self.paired:
            self.stacks = _bottleneck_stack(2 * k * c, 2 * c, c, groups=2)
        else:
            self.region_fusion = _bottleneck_stack(k * c, c, max(1, c // 2))
            self.shortcut = _bottleneck_stack(m * c, c, c - max(1, c // 2))
        self.num_classes = k

    def forward(self, x: torch.Tensor, regions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, m = x.shape[:2]
        flat_x, flat_r = x.flatten(3), regions.flatten(2)  # [B, M, C, V], [B, K, V]
        region_mean = flat_r.mean(-1, keepdim=True) + 1e-7  # [B, K, 1]
        pooled = torch.einsum("bmcv,bkv->bkmc", flat_x, flat_r).flatten(2) / (flat_r.shape[-1] * region_mean)
        features = torch.cat([pooled, region_mean], dim=2)  # [B, K, M * C + 1]
        weights = torch.sigmoid(self.weight_mlp(features.reshape(b, -1, 1))).view(b, self.num_classes, m)
        weights = weights * mask[:, None, :].to(weights.dtype)
        fused = torch.einsum("bkm,bmcv->bkcv", weights, flat_x) * flat_r[:, :, None]  # [B, K, C, V]
        fused = fused.reshape(b, -1, *x.shape[3:])
        if self.paired:
            return self.stacks(torch.cat([fused, x.flatten(1, 2)], dim=1))
        return torch.cat([self.region_fusion(fused), self.shortcut(x.flatten(1, 2))], dim=1)


def _refuse_earlier_layout(module: nn.Module, state_dict: dict, prefix: str, *_: object) -> None:
    """Load hook: one line for weights of prism's earlier rfnet (a 3-layer fusion-weight MLP without the region
    mean, affine norms after bias-free convolutions), which cannot become RFNet's layers."""
    if f"{prefix}fusions.0.weight_mlp.4.weight" in state_dict:
        raise CheckpointError(
            "model.name: rfnet: these weights are of prism's earlier rfnet layout (a 3-layer fusion-weight MLP "
            "without the region-mean input, affine norms); rfnet is now RFNet as published (Ding et al., ICCV "
            "2021) and cannot load them: retrain, or evaluate them with the prism release that wrote them")


class RegionMapGenerator(nn.Module):
    """Region-map logits ``[B, K, ...]`` from the masked modality features (and the decoder feature, if any)."""

    def __init__(self, channels: int, num_modalities: int, num_classes: int, *, with_decoder: bool) -> None:
        super().__init__()
        self.embed = _bottleneck_stack(num_modalities * channels, max(1, channels // 4), channels)
        self.with_decoder = with_decoder
        self.head = nn.Sequential(conv_norm_act(channels * (2 if with_decoder else 1), 16, 1, **UNIT),
                                  nn.Conv3d(16, num_classes, 1))

    def forward(self, x: torch.Tensor, decoder: torch.Tensor | None = None) -> torch.Tensor:
        y = self.embed(x.flatten(1, 2))
        return self.head(torch.cat([decoder, y], dim=1) if self.with_decoder else y)


@dataclass
class RFNetOutput(SegOutput):
    """SegOutput plus RFNet's extra parts: the separate decoder's per-modality logits ``sep`` ``[B, M, K, ...]``
    (term ``rfnet_sep``), the full-resolution (level-0) region-map logits ``region0`` ``[B, K, ...]`` (PASSION's
    first PRM level; ``prism`` option ``prm_region0``) and those of each single-modality path, ``uni_region0``
    ``[B, M, K, ...]`` (PASSION's first pixel-KL level; ``pixel_kl`` option ``region0_weight``)."""

    sep: torch.Tensor | None = None
    region0: torch.Tensor | None = None
    uni_region0: torch.Tensor | None = None


class RFNet(Backbone):
    """Region-aware fusion network (Ding et al., ICCV 2021) on the SegOutput contract.

    Options: ``width`` (channels at level 0; the peers use 8 and 16), ``depth`` (levels, 4), ``uni_in_eval``,
    ``separate_decoder`` (also run RFNet's shared per-modality decoder, output ``sep``; default True).
    ``deep`` holds the region-map logits of levels 1..depth-1 (RFNet's PRM outputs); the region maps feed the
    fusion detached at those levels (they learn from the PRM loss) and attached at level 0, which has no deep
    output of its own, unless a loss reads the level-0 map (``region0``, ``uni_region0``): then it is detached
    there too, as in RFNet, whose first PRM level is that map. The per-modality parts (``uni``, ``uni_deep``,
    ``uni_features``, ``uni_region0``) are the fusion decoder run under each single-modality mask (PASSION's
    distillation paths), stacked with the fused path along the batch in one pass; the separate decoder likewise
    runs once over all modalities stacked along the batch.

    The layers are RFNet's (Ding et al., ICCV 2021, github.com/dyh127/RFNet layers.py and models.py): width 8
    has its 2,381,792 parameters (PASSION's RFNet, Jun-Jie-Shi/PASSION code/models/rfnet.py). It differs in
    zero padding where RFNet pads by reflection, and in running the modality encoders, the fusion MLPs and the
    paired fusion stacks as grouped convolutions. Weights of prism's earlier rfnet layout are refused on load.
    """

    provides = frozenset({"logits", "deep", "uni", "uni_deep", "features", "uni_features", "sep", "region0",
                          "uni_region0"})
    head_patterns = ("seg.*", "separate.heads.*", "region_maps.*.head.1.*")

    def __init__(self, modalities: tuple[str, ...], num_classes: int, *,
                 width: Annotated[int, Field(ge=2, description="channels of the first encoder level, doubled at "
                                                               "each level below (the peers use 8 and 16)")] = 8,
                 depth: Depth = 4, uni_in_eval: UniInEval = False,
                 separate_decoder: Annotated[bool, Field(description="also run RFNet's shared per-modality "
                                                                     "decoder, output sep")] = True) -> None:
        super().__init__(modalities, num_classes)
        m, k = self.num_modalities, num_classes
        self.size_divisor = 2 ** (depth - 1)
        self.uni_in_eval = uni_in_eval
        self.encoder = GroupedResidualEncoder(m, width, depth, **UNIT)
        chans = self.encoder.channels
        top = depth - 1
        self.fusions = nn.ModuleList(RegionAwareFusion(c, m, k) for c in chans)
        self.region_maps = nn.ModuleList(
            RegionMapGenerator(c, m, k, with_decoder=lv < top) for lv, c in enumerate(chans)
        )
        self.c1 = nn.ModuleList(conv_norm_act(chans[lv + 1], chans[lv], **UNIT) for lv in range(top))
        self.c2 = nn.ModuleList(conv_norm_act(2 * chans[lv], chans[lv], **UNIT) for lv in range(top))
        self.out = nn.ModuleList(conv_norm_act(chans[lv], chans[lv], 1, **UNIT) for lv in range(top))
        self.seg = nn.Conv3d(chans[0], k, 1)
        self.separate = SharedDecoder(chans, k, deep_heads=False, **UNIT) if separate_decoder else None
        self.register_load_state_dict_pre_hook(_refuse_earlier_layout)

    @property
    def extra_loss_terms(self) -> tuple[str, ...]:
        """Registered terms for this backbone's own outputs (``rfnet_sep`` reads ``sep``)."""
        return ("rfnet_sep",) if self.separate is not None else ()

    def fusion_decoder(self, levels: list[torch.Tensor], mask: torch.Tensor, region0: bool = False
                       ) -> tuple[torch.Tensor, ...]:
        """Fused logits, region-map logits of levels 1.. (finest first) and level-0 features for ``mask``.

        ``levels``: modality features ``[N, M, C_l, ...]`` per level with the missing modalities already zeroed
        (``zero_missing``); ``mask``: ``[N, M]``, bool or 0/1 weights (converted once, for every fusion);
        ``region0``: also return the level-0 region-map logits (a loss scores them: detached in the fusion).
        """
        mask = mask.to(levels[0].dtype)
        top = len(levels) - 1
        region_logits = [self.region_maps[top](levels[top])]
        y = self.fusions[top](levels[top], region_logits[0].softmax(1).detach(), mask)
        for lv in reversed(range(top)):
            u = self.c1[lv](up2(y))
            r = self.region_maps[lv](levels[lv], u)
            region_logits.append(r)
            regions = r.softmax(1) if lv == 0 and not region0 else r.softmax(1).detach()
            y = self.out[lv](self.c2[lv](torch.cat([self.fusions[lv](levels[lv], regions, mask), u], dim=1)))
        region_logits.reverse()  # finest first; [0] is level 0 (used inside the fusion, and as ``region0``)
        if region0:
            return self.seg(y), region_logits[1:], y, region_logits[0]
        return self.seg(y), region_logits[1:], y

    def forward(self, image: torch.Tensor, mask: torch.Tensor) -> RFNetOutput:
        self.check_input(image, mask)
        b, m = mask.shape
        weight = mask.to(device=image.device, dtype=image.dtype)  # 0/1 per modality, converted once
        levels = [zero_missing(f, weight) for f in self.encoder(zero_missing(image, weight))]
        with_uni = bool(self.requested & UNI_PARTS) if self.training else self.uni_in_eval
        with_region0 = self.training and bool(self.requested & {"region0", "uni_region0"})
        if not with_uni:
            logits, deep, features, *region0 = self.fusion_decoder(levels, weight, with_region0)
            out = RFNetOutput(logits=logits, deep=deep, features=features, region0=region0[0] if region0 else None)
            return self.with_separate(out, levels)

        # path 0: the fused one; path 1 + i: modality i alone (all zero where it is missing)
        solo = torch.eye(m, dtype=weight.dtype, device=weight.device).unsqueeze(1) * weight.unsqueeze(0)  # [M, B, M]
        path_weight = torch.cat([weight.unsqueeze(0), solo])  # [1 + M, B, M]
        # every path's features, zeroed for its own mask, in one multiply per level: [(1 + M) * B, M, C, ...]
        stacked = [(f.unsqueeze(0) * path_weight.view(*path_weight.shape, *([1] * (f.dim() - 2)))).flatten(0, 1)
                   for f in levels]
        logits, deep, features, *region0 = self.fusion_decoder(stacked, path_weight.flatten(0, 1), with_region0)

        def split(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            t = t.unflatten(0, (1 + m, b))
            return t[0], t[1:].transpose(0, 1)

        out = RFNetOutput(logits=split(logits)[0], deep=[split(t)[0] for t in deep])
        out.uni = split(logits)[1]
        out.uni_deep = [split(t)[1] for t in deep]
        out.features, out.uni_features = split(features)
        if region0:
            out.region0, out.uni_region0 = split(region0[0])
        return self.with_separate(out, levels)

    def with_separate(self, out: RFNetOutput, levels: list[torch.Tensor]) -> RFNetOutput:
        """Add ``sep`` (the separate decoder's per-modality logits) when a loss reads it (train mode) or with
        ``uni_in_eval`` (eval mode)."""
        wanted = "sep" in self.requested if self.training else self.uni_in_eval
        if self.separate is not None and wanted:
            sep, _ = self.separate([stack_modalities(f) for f in levels], with_deep=False)
            out.sep = unstack_modalities(sep[0], levels[0].shape[0])
        return out
