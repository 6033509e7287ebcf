"""The built-in backbone on the SegOutput contract."""

from __future__ import annotations

import io

import pytest
import torch

from prism.errors import ConfigError
from prism.modalities import BRATS_MODALITIES, combination_masks
from prism.registry import create_backbone


def tiny(**kw):
    torch.manual_seed(0)
    return create_backbone("multi_unet", BRATS_MODALITIES, 4, width=4, depth=3, **kw)


def test_train_mode_shapes():
    model = tiny().train()
    out = model(torch.randn(2, 4, 16, 16, 16), torch.ones(2, 4, dtype=torch.bool))
    assert out.logits.shape == (2, 4, 16, 16, 16)
    assert [t.shape for t in out.deep] == [(2, 4, 8, 8, 8)]
    assert out.uni.shape == (2, 4, 4, 16, 16, 16)
    assert [t.shape for t in out.uni_deep] == [(2, 4, 4, 8, 8, 8)]
    assert out.features.shape == (2, 4, 16, 16, 16) and out.uni_features.shape == (2, 4, 4, 16, 16, 16)
    assert out.present() == type(model).provides


def test_eval_mode_and_requested_parts_skip_uni():
    model = tiny().eval()
    out = model(torch.randn(1, 4, 16, 16, 16), torch.ones(1, 4, dtype=torch.bool))
    assert out.uni is None and out.logits.shape == (1, 4, 16, 16, 16)
    model.train()
    model.request_parts({"logits"})
    assert model(torch.randn(1, 4, 16, 16, 16), torch.ones(1, 4, dtype=torch.bool)).uni is None


@pytest.mark.parametrize("index", range(15))
def test_output_ignores_content_of_masked_out_channels(index):
    model = tiny().train()
    mask = combination_masks(BRATS_MODALITIES)[index].expand(2, 4)
    x = torch.randn(2, 4, 16, 16, 16)
    noisy = x.clone()
    noisy[:, ~mask[0]] = torch.randn_like(noisy[:, ~mask[0]]) * 100
    a, b = model(x, mask), model(noisy, mask)
    for part in ("logits", "uni", "features", "uni_features"):
        torch.testing.assert_close(getattr(a, part), getattr(b, part), rtol=0, atol=0)
    torch.testing.assert_close(a.deep[0], b.deep[0], rtol=0, atol=0)


def test_missing_modality_changes_fusion():
    model = tiny().eval()
    x = torch.randn(1, 4, 16, 16, 16)
    full = model(x, torch.ones(1, 4, dtype=torch.bool)).logits
    part = model(x, torch.tensor([[True, False, True, True]])).logits
    assert not torch.allclose(full, part)


def test_gradients_reach_every_parameter():
    model = tiny().train()
    out = model(torch.randn(2, 4, 16, 16, 16), torch.ones(2, 4, dtype=torch.bool))
    (out.logits.sum() + out.deep[0].sum() + out.uni.sum()).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


def test_deterministic_and_state_dict_roundtrip():
    x, mask = torch.randn(1, 4, 16, 16, 16), torch.tensor([[True, True, False, True]])
    a, b = tiny().eval(), tiny().eval()
    torch.testing.assert_close(a(x, mask).logits, b(x, mask).logits, rtol=0, atol=0)
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    torch.manual_seed(99)
    c = create_backbone("multi_unet", BRATS_MODALITIES, 4, width=4, depth=3).eval()
    c.load_state_dict(torch.load(buf, weights_only=True))
    torch.testing.assert_close(a(x, mask).logits, c(x, mask).logits, rtol=0, atol=0)


def test_bad_input_sizes_are_one_line_errors():
    model = tiny()
    with pytest.raises(ConfigError, match=r"divisible by 4, got \(18, 16, 16\)"):
        model(torch.randn(1, 4, 18, 16, 16), torch.ones(1, 4, dtype=torch.bool))
    with pytest.raises(ConfigError, match=r"expects image \[B, 4, D, H, W\]"):
        model(torch.randn(1, 3, 16, 16, 16), torch.ones(1, 3, dtype=torch.bool))
