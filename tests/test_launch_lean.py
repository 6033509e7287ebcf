"""The launch-lean step: same results as the reference formulations, fewer kernel-level ops.

Reference formulations are written here from their definitions (InstanceNorm3d units, RFNet's two separate fusion
stacks, per-parameter optimizers) and compared with the lean ones on fixed seeds, in float64.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from prism.config import build_config
from prism.engine.builder import build_optimizer
from prism.modalities import BRATS_MODALITIES
from prism.plugins.backbones.blocks import ConvBlock, conv_norm_act
from prism.plugins.backbones.rfnet import RegionAwareFusion
from prism.registry import create_backbone

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from launch_counter import LaunchCounter  # noqa: E402


def reference_unit(c_in: int, c_out: int, k: int = 3, *, stride: int = 1, groups: int = 1, slope: float = 0.2,
                   bias: bool = False, affine: bool = True) -> nn.Sequential:
    """The unit as it was: convolution, InstanceNorm3d, in-place LeakyReLU (RFNet's: bias, no affine)."""
    return nn.Sequential(nn.Conv3d(c_in, c_out, k, stride=stride, padding=k // 2, groups=groups, bias=bias),
                         nn.InstanceNorm3d(c_out, affine=affine), nn.LeakyReLU(slope, inplace=True))


def _randomise(module: nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.5 + (1.0 if p.dim() == 1 else 0.0))


def _out_and_grads(module: nn.Module, x: torch.Tensor, *extra: torch.Tensor) -> list[torch.Tensor]:
    x = x.clone().requires_grad_(True)
    y = module(x, *extra)
    w = torch.randn(y.shape, generator=torch.Generator().manual_seed(9), dtype=y.dtype)
    (y * w).sum().backward()
    return [y.detach(), x.grad, *(p.grad for p in module.parameters())]


def _assert_same(a: list[torch.Tensor], b: list[torch.Tensor]) -> None:
    assert len(a) == len(b)
    for u, v in zip(a, b, strict=True):
        torch.testing.assert_close(u, v, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("c_in,c_out,k,stride,groups", [(8, 6, 3, 1, 1), (8, 8, 3, 2, 4), (6, 4, 1, 1, 2)])
def test_lean_unit_equals_instance_norm_unit_and_loads_its_weights(c_in, c_out, k, stride, groups):
    lean = conv_norm_act(c_in, c_out, k, stride=stride, groups=groups).double()
    ref = reference_unit(c_in, c_out, k, stride=stride, groups=groups).double()
    _randomise(ref, 0)
    lean.load_state_dict(ref.state_dict())  # same keys, strict: old checkpoints load
    x = torch.randn(2, c_in, 8, 6, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    _assert_same(_out_and_grads(lean, x), _out_and_grads(ref, x))


def test_conv_block_equals_instance_norm_block():
    ref = nn.Sequential(*reference_unit(4, 8, groups=2, stride=2, slope=0.01),
                        *reference_unit(8, 8, groups=2, slope=0.01)).double()
    lean = ConvBlock(4, 8, stride=2, groups=2).double()
    _randomise(ref, 3)
    lean.load_state_dict(ref.state_dict())
    x = torch.randn(1, 4, 8, 8, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    _assert_same(_out_and_grads(lean, x), _out_and_grads(ref, x))


def test_lean_unit_launches_fewer_ops_forward_and_backward():
    def ops(unit: nn.Module) -> int:
        x = torch.randn(1, 8, 6, 6, 6, requires_grad=True)
        with LaunchCounter() as c:
            unit(x).sum().backward()
        return c.total

    lean, ref = ops(conv_norm_act(8, 8)), ops(reference_unit(8, 8))
    assert lean <= 8 < 12 <= ref  # conv, norm, act + their backward (+ sum, ones_like) vs repeat/batch-norm copies


class SeparateFusion(RegionAwareFusion):
    """The reference: region fusion and shortcut as two stacks, concatenated after them."""

    def __init__(self, c: int, m: int, k: int) -> None:
        nn.Module.__init__(self)
        self.num_classes = k
        self.weight_mlp = RegionAwareFusion(c, m, k).weight_mlp
        self.paired = False
        rfnet = {"bias": True, "affine": False}  # RFNet's unit
        self.region_fusion = nn.Sequential(reference_unit(k * c, c, 1, **rfnet), reference_unit(c, c, **rfnet),
                                           reference_unit(c, c // 2, 1, **rfnet))
        self.shortcut = nn.Sequential(reference_unit(m * c, c, 1, **rfnet), reference_unit(c, c, **rfnet),
                                      reference_unit(c, c - c // 2, 1, **rfnet))


def test_grouped_fusion_stacks_equal_the_separate_stacks():
    c, m, k = 4, 4, 4
    ref = SeparateFusion(c, m, k).double()
    _randomise(ref, 5)
    lean = RegionAwareFusion(c, m, k).double()
    assert lean.paired and not hasattr(lean, "region_fusion")
    state = ref.state_dict()  # the grouped stack holds region fusion's weights first, the shortcut's second
    for key in [key for key in state if key.startswith("region_fusion.")]:
        rest = key[len("region_fusion."):]
        state["stacks." + rest] = torch.cat([state.pop(key), state.pop("shortcut." + rest)])
    lean.load_state_dict(state)
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, m, c, 4, 6, 4, generator=g, dtype=torch.float64)
    regions = torch.randn(2, k, 4, 6, 4, generator=g, dtype=torch.float64).softmax(1)
    mask = torch.tensor([[True, False, True, True], [False, True, False, False]])
    lean_out, ref_out = _out_and_grads(lean, x, regions, mask), _out_and_grads(ref, x, regions, mask)
    _assert_same(lean_out[:2], ref_out[:2])  # output and input gradient
    ref_grads = {n: p.grad for n, p in ref.named_parameters()}
    for name, p in lean.named_parameters():
        if name.startswith("stacks."):  # grouped: region fusion's half first, the shortcut's second
            first, second = p.grad.chunk(2)
            rest = name[len("stacks."):]
            _assert_same([first, second], [ref_grads["region_fusion." + rest], ref_grads["shortcut." + rest]])
        else:
            _assert_same([p.grad], [ref_grads[name]])


def test_fusion_keeps_separate_stacks_where_they_differ_in_shape():
    assert not RegionAwareFusion(4, 4, 3).paired and not RegionAwareFusion(3, 4, 4).paired
    assert RegionAwareFusion(8, 4, 4).paired


def _reference_optimizer(name: str, params: list[torch.Tensor], cfg) -> torch.optim.Optimizer:
    o = cfg.optim
    if name == "adamw":
        return torch.optim.AdamW(params, lr=o.lr, weight_decay=o.weight_decay, foreach=False, fused=False)
    if name == "adam":
        return torch.optim.Adam(params, lr=o.lr, weight_decay=o.weight_decay, foreach=False, fused=False)
    return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, nesterov=True, weight_decay=o.weight_decay,
                           foreach=False, fused=False)


@pytest.mark.parametrize("name", ["adamw", "adam", "sgd"])
@pytest.mark.parametrize("capturable", [False, True])
def test_optimizer_matches_per_parameter_reference_without_host_reads(name, capturable):
    cfg = build_config(None, [f"optim.name={name}", "optim.lr=0.01", "optim.weight_decay=0.01"])
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv3d(2, 3, 3), nn.GroupNorm(3, 3), nn.Conv3d(3, 1, 1))
    ref_params = [p.detach().clone().requires_grad_(True) for p in model.parameters()]
    opt, ref = build_optimizer(cfg, model, capturable=capturable), _reference_optimizer(name, ref_params, cfg)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 ** s)
    ref_sched = torch.optim.lr_scheduler.LambdaLR(ref, lambda s: 0.5 ** s)
    g = torch.Generator().manual_seed(1)
    for step in range(3):
        for p, q in zip(model.parameters(), ref_params, strict=True):
            p.grad = torch.randn(p.shape, generator=g)
            q.grad = p.grad.clone()
        if step == 2:
            with LaunchCounter() as counter:
                opt.step()
        else:
            opt.step()
        ref.step()
        sched.step()
        ref_sched.step()
    assert counter.sync_total == 0
    assert counter.total <= 2  # one fused kernel (plus one foreach step-counter increment)
    for p, q in zip(model.parameters(), ref_params, strict=True):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-5, atol=1e-6)


def test_rfnet_brats_sized_model_uses_grouped_fusion_and_runs():
    torch.manual_seed(0)
    model = create_backbone("rfnet", BRATS_MODALITIES, 4, width=4, depth=3).train()
    assert all(f.paired for f in model.fusions)
    out = model(torch.randn(1, 4, 8, 8, 8), torch.tensor([[True, False, True, True]]))
    assert out.logits.shape == (1, 4, 8, 8, 8) and torch.isfinite(out.logits).all()
