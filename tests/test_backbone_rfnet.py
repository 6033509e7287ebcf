"""RFNet specifics: per-modality paths are the fusion decoder under single-modality masks; the separate decoder."""

from __future__ import annotations

import pytest
import torch

from prism.batch import Batch
from prism.errors import PluginError
from prism.modalities import BRATS_MODALITIES
from prism.registry import create_backbone, create_loss


def tiny(**kw):
    torch.manual_seed(0)
    return create_backbone("rfnet", BRATS_MODALITIES, 3, width=4, depth=3, **kw)


def test_uni_path_equals_the_fusion_decoder_run_with_that_modality_alone():
    model = tiny().train()
    x = torch.randn(2, 4, 16, 16, 16)
    mask = torch.tensor([[True, True, False, True], [False, True, True, False]])
    with torch.no_grad():
        out = model(x, mask)
        model.request_parts({"logits"})  # the fused path only, run once per single-modality mask
        for i in range(4):
            solo = torch.zeros_like(mask)
            solo[:, i] = mask[:, i]
            alone = model(x, solo)
            torch.testing.assert_close(out.uni[:, i], alone.logits, rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(out.uni_deep[0][:, i], alone.deep[0], rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(out.uni_features[:, i], alone.features, rtol=1e-4, atol=1e-5)


def test_separate_decoder_output_and_its_loss_term():
    model = tiny().train()
    x, mask = torch.randn(2, 4, 16, 16, 16), torch.tensor([[True, False, True, True], [True, True, True, True]])
    out = model(x, mask)
    assert out.sep.shape == (2, 4, 3, 16, 16, 16)
    assert model.extra_loss_terms == ("rfnet_sep",)
    batch = Batch(image=x, label=torch.randint(0, 3, (2, 16, 16, 16)), mask=mask, availability=mask)
    result = create_loss("rfnet_sep", BRATS_MODALITIES, 3)(out, batch)
    assert result.total.dim() == 0 and result.total > 0
    assert result.parts["rfnet_sep/t1ce"] > 0  # available in sample 2
    result.total.backward()
    assert model.separate.heads[0].weight.grad.abs().sum() > 0


def test_without_separate_decoder_the_term_says_what_is_missing():
    model = tiny(separate_decoder=False).train()
    x, mask = torch.randn(1, 4, 16, 16, 16), torch.ones(1, 4, dtype=torch.bool)
    out = model(x, mask)
    assert out.sep is None and model.extra_loss_terms == ()
    batch = Batch(image=x, label=torch.zeros(1, 16, 16, 16, dtype=torch.long), mask=mask, availability=mask)
    with pytest.raises(PluginError, match="rfnet_sep.*separate_decoder=True"):
        create_loss("rfnet_sep", BRATS_MODALITIES, 3)(out, batch)


def rfnet_parameters_by_hand(d: int, k: int = 4, m: int = 4) -> int:
    """RFNet's parameter count, from its architecture (Ding et al., ICCV 2021; github.com/dyh127/RFNet layers.py
    and models.py, as PASSION's RFNet builds it with basic_dims = d): every unit is ``general_conv3d``, a
    convolution with a bias followed by InstanceNorm3d without affine parameters."""

    def unit(c_in: int, c_out: int, kernel: int = 3) -> int:
        return c_in * c_out * kernel**3 + c_out

    encoder = unit(1, d) + 2 * unit(d, d)  # e1_c1..c3
    for lv in (1, 2, 3):  # e{2,3,4}: a strided c1 doubling the channels, then c2, c3
        c = d * 2**lv
        encoder += unit(c // 2, c) + 2 * unit(c, c)
    # d3_c1, d3_c2, d3_out, d2_*, d1_*, then the 1x1 seg_layer (with bias)
    decoder = sum(unit(2 * c, c) + unit(2 * c, c) + unit(c, c, 1) for c in (4 * d, 2 * d, d)) + d * k + k

    def fusion(c: int) -> int:  # region_aware_modal_fusion: K weight MLPs 4C+1 -> 128 -> 4, region fusion, shortcut
        mlp = (m * c + 1) * 128 + 128 + 128 * m + m
        return k * mlp + (unit(k * c, c, 1) + unit(c, c) + unit(c, c // 2, 1)) + \
            (unit(m * c, c, 1) + unit(c, c) + unit(c, c // 2, 1))

    def region_maps(c: int, with_decoder: bool) -> int:  # prm_generator(_laststage): embedding, then its head
        embedding = unit(m * c, c // 4, 1) + unit(c // 4, c // 4) + unit(c // 4, c, 1)
        return embedding + unit((2 if with_decoder else 1) * c, 16, 1) + 16 * k + k

    levels = [d, 2 * d, 4 * d, 8 * d]
    fused_decoder = decoder + sum(fusion(c) for c in levels) + \
        sum(region_maps(c, with_decoder=c != 8 * d) for c in levels)
    return m * encoder + fused_decoder + decoder  # four encoders, the fusion decoder, the separate decoder


def test_width_8_has_rfnets_parameter_count():
    assert rfnet_parameters_by_hand(8) == 2_381_792  # PASSION's RFNet (basic_dims = 8), as counted there
    for width in (8, 16):
        model = create_backbone("rfnet", BRATS_MODALITIES, 4, width=width)
        assert sum(p.numel() for p in model.parameters()) == rfnet_parameters_by_hand(width)


def test_fusion_weights_read_the_region_mean():
    """Per region, RFNet's weight MLP reads the modalities' region-pooled features and the region's mean
    probability: two inputs pooling to the same features but with different region means get different weights."""
    from prism.plugins.backbones.rfnet import RegionAwareFusion

    torch.manual_seed(0)
    fusion = RegionAwareFusion(4, 4, 4).double()
    first = fusion.weight_mlp[0]
    assert first.in_channels == 4 * (4 * 4 + 1) and first.out_channels == 4 * 128 and len(fusion.weight_mlp) == 3
    x = torch.ones(1, 4, 4, 2, 2, 2, dtype=torch.float64)
    mask = torch.ones(1, 4, dtype=torch.bool)
    seen = []
    fusion.weight_mlp.register_forward_hook(lambda _m, args, _o: seen.append(args[0].flatten()))
    for p in (0.2, 0.6):  # a constant region map: pooled features = x (divided by the mean), region mean = p
        regions = torch.full((1, 4, 2, 2, 2), p, dtype=torch.float64)
        fusion(x, regions, mask)
    for p, inputs in zip((0.2, 0.6), seen, strict=True):  # per region: 16 pooled features, then the region mean
        per_region = inputs.view(4, 17)
        mean = p + 1e-7  # RFNet's prm_avg
        torch.testing.assert_close(per_region[:, :16], torch.full((4, 16), p / mean, dtype=torch.float64))
        torch.testing.assert_close(per_region[:, 16], torch.full((4,), mean, dtype=torch.float64))


def test_weights_of_the_earlier_layout_are_refused_in_one_line():
    from prism.errors import CheckpointError

    model = tiny()
    state = model.state_dict()
    state["fusions.0.weight_mlp.4.weight"] = torch.zeros(1)  # the earlier 3-layer fusion-weight MLP
    with pytest.raises(CheckpointError) as info:
        model.load_state_dict(state)
    assert "\n" not in str(info.value) and str(info.value).startswith("model.name: rfnet: these weights are of "
                                                                      "prism's earlier rfnet layout")


def test_single_modality_region_maps_are_the_region_maps_of_that_modality_alone():
    model = tiny().train()
    model.request_parts({"uni", "region0", "uni_region0"})
    x = torch.randn(2, 4, 16, 16, 16)
    mask = torch.tensor([[True, True, False, True], [False, True, True, False]])
    with torch.no_grad():
        out = model(x, mask)
        assert out.uni_region0.shape == (2, 4, 3, 16, 16, 16)
        model.request_parts({"region0"})
        for i in range(4):
            solo = torch.zeros_like(mask)
            solo[:, i] = mask[:, i]
            torch.testing.assert_close(out.uni_region0[:, i], model(x, solo).region0, rtol=1e-4, atol=1e-5)
    model.request_parts({"logits"})
    assert model(x, mask).uni_region0 is None  # only when a loss reads it
