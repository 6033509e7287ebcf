"""One suite over every registered backbone (third-party ones included): the SegOutput contract.

Each backbone is built with small options (``width=4``, ``depth=3``, ``dim=32`` where its constructor takes them), fed
the smallest cubic patch of at least 16 voxels that its ``size_divisor`` allows.
"""

from __future__ import annotations

import dataclasses
import inspect
import io

import pytest
import torch

from prism.errors import ConfigError
from prism.modalities import BRATS_MODALITIES, combination_masks
from prism.registry import create_backbone, get_registry, list_plugins

SMALL = {"width": 4, "depth": 3, "dim": 32}
NUM_CLASSES = 3
BACKBONES = list_plugins("backbone")


def small_options(name: str) -> dict:
    factory = get_registry().get("backbone", name).factory
    params = inspect.signature(factory).parameters
    return {k: v for k, v in SMALL.items() if k in params}


def build(name: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_backbone(name, BRATS_MODALITIES, NUM_CLASSES, **small_options(name))


def patch_size(model: torch.nn.Module) -> int:
    d = int(getattr(model, "size_divisor", 1))
    return max(d, -(-16 // d) * d)


def inputs(model: torch.nn.Module, batch: int = 2, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    s = patch_size(model)
    return torch.randn(batch, len(BRATS_MODALITIES), s, s, s, generator=g), torch.ones(batch, 4, dtype=torch.bool)


def tensors(out) -> dict[str, torch.Tensor]:
    """Every tensor an output holds (SegOutput parts and a subclass's extra fields), lists flattened."""
    found = {}
    for f in dataclasses.fields(out):
        value = getattr(out, f.name)
        if isinstance(value, torch.Tensor):
            found[f.name] = value
        elif isinstance(value, list | tuple):
            found.update({f"{f.name}[{i}]": t for i, t in enumerate(value) if isinstance(t, torch.Tensor)})
    return found


def check_shapes(out, parts: frozenset[str], b: int, s: int) -> None:
    k, m = NUM_CLASSES, len(BRATS_MODALITIES)
    assert out.logits.shape == (b, k, s, s, s)
    if "deep" in parts:
        assert out.deep, "deep is declared but empty"
        sizes = [t.shape[2:] for t in out.deep]
        for t in out.deep:
            assert t.shape[:2] == (b, k) and all(s % d == 0 and d < s for d in t.shape[2:])
        assert sizes == sorted(sizes, reverse=True), "deep levels must be finest first"
    if "uni" in parts:
        assert out.uni.shape == (b, m, k, s, s, s)
    if "uni_deep" in parts:
        assert [tuple(t.shape) for t in out.uni_deep] == [(b, m, *d.shape[1:]) for d in out.deep]
    if "features" in parts:
        assert out.features.dim() == 5 and out.features.shape[0] == b and out.features.shape[2:] == (s, s, s)
    if "uni_features" in parts:
        assert out.uni_features.shape[:2] == (b, m) and out.uni_features.shape[3:] == (s, s, s)
        if "features" in parts:
            assert out.uni_features.shape[2] == out.features.shape[1]


@pytest.mark.parametrize("name", BACKBONES)
def test_train_mode_gives_every_declared_part_with_its_shape(name):
    model = build(name).train()
    x, mask = inputs(model)
    out = model(x, mask)
    provides = type(model).provides
    assert "logits" in provides
    assert provides <= out.present(), f"declared {sorted(provides)}, returned {sorted(out.present())}"
    check_shapes(out, provides, 2, x.shape[-1])


@pytest.mark.parametrize("name", BACKBONES)
def test_eval_mode_gives_logits_and_correct_optional_shapes(name):
    model = build(name).eval()
    x, mask = inputs(model, batch=1)
    with torch.no_grad():
        out = model(x, mask)
    check_shapes(out, out.present() & type(model).provides, 1, x.shape[-1])


@pytest.mark.parametrize("name", BACKBONES)
def test_requesting_only_logits_still_gives_logits(name):
    model = build(name).train()
    model.request_parts({"logits"})
    x, mask = inputs(model, batch=1)
    assert model(x, mask).logits.shape[:2] == (1, NUM_CLASSES)


@pytest.mark.parametrize("name", BACKBONES)
def test_gradients_reach_every_parameter(name):
    model = build(name).train()
    x, mask = inputs(model)
    out = model(x, mask)
    g = torch.Generator().manual_seed(2)  # a random projection: plain sums leave some norm weights at zero
    loss = sum((t.float() * torch.randn(t.shape, generator=g)).sum() for t in tensors(out).values())
    loss.backward()
    dead = [n for n, p in model.named_parameters()
            if p.requires_grad and (p.grad is None or not p.grad.abs().sum() > 0)]
    assert dead == []


@pytest.mark.parametrize("name", BACKBONES)
def test_output_ignores_content_of_masked_out_channels_for_all_15_combinations(name):
    model = build(name).train()  # train mode: every declared part
    masks = combination_masks(BRATS_MODALITIES)  # [15, 4]: one sample per combination
    x, _ = inputs(model, batch=len(masks))
    x = x * masks[:, :, None, None, None]
    noisy = x + torch.randn_like(x) * 100 * (~masks)[:, :, None, None, None]
    with torch.no_grad():
        a, b = tensors(model(x, masks)), tensors(model(noisy, masks))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=f"{name}: part {key} depends on it")


@pytest.mark.parametrize("name", BACKBONES)
def test_missing_modality_changes_the_fused_output(name):
    model = build(name).eval()
    x, _ = inputs(model, batch=1)
    with torch.no_grad():
        full = model(x, torch.ones(1, 4, dtype=torch.bool)).logits
        part = model(x, torch.tensor([[True, False, True, True]])).logits
    assert not torch.allclose(full, part)


@pytest.mark.parametrize("name", BACKBONES)
def test_deterministic_on_cpu_with_a_seed(name):
    a, b = build(name, seed=5).train(), build(name, seed=5).train()
    x, mask = inputs(a)
    mask[0, 1] = False
    ta, tb = tensors(a(x, mask)), tensors(b(x, mask))
    for key in ta:
        torch.testing.assert_close(ta[key], tb[key], rtol=0, atol=0)


@pytest.mark.parametrize("name", BACKBONES)
def test_state_dict_roundtrip_gives_identical_outputs(name):
    a = build(name, seed=0).eval()
    x, mask = inputs(a, batch=1)
    mask[0, 2] = False
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    c = build(name, seed=99).eval()
    with torch.no_grad():
        before = c(x, mask).logits
        c.load_state_dict(torch.load(buf, weights_only=True))
        expected, got = a(x, mask).logits, c(x, mask).logits
    assert not torch.equal(before, expected), "different seeds should give different weights"
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


@pytest.mark.parametrize("name", BACKBONES)
def test_bad_input_gives_a_one_line_config_error(name):
    model = build(name)
    x, mask = inputs(model, batch=1)
    d = int(getattr(model, "size_divisor", 1))
    if d > 1:
        bad = torch.randn(1, 4, x.shape[2] + 1, *x.shape[3:])
        with pytest.raises(ConfigError, match=rf"divisible by {d}, got \({x.shape[2] + 1}, ") as info:
            model(bad, mask)
        assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match=r"expects image \[B, 4, D, H, W\]") as info:
        model(x[:, :3], mask[:, :3])
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("name", BACKBONES)
def test_combination_logits_equal_forward_under_each_mask(name):
    """Evaluation scores all 15 combinations through ``combination_logits``; it must equal ``forward``."""
    model = build(name).eval()
    image, _ = inputs(model, batch=2)
    masks = combination_masks(BRATS_MODALITIES)
    with torch.no_grad():
        together = model.combination_logits(image, masks)  # [B, C, K, ...]
        assert together.shape[:3] == (2, 15, NUM_CLASSES)
        for c in range(15):
            mask = masks[c].expand(2, -1)
            alone = model(image * mask[:, :, None, None, None], mask).logits
            torch.testing.assert_close(together[:, c], alone, rtol=1e-4, atol=1e-5)
