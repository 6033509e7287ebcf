"""MAML inner loops: known values on a scalar problem, and the three backends agreeing in float64."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

from prism.batch import Batch
from prism.modalities import BRATS_MODALITIES
from prism.outputs import SegOutput
from prism.plugins.losses import dice_ce_loss
from prism.plugins.strategies.maml_backends import make_inner_loop
from prism.registry import create_backbone

BACKENDS = ["torch", "higher"]


def learn2learn_or_skip():
    """learn2learn needs its own environment (see .ci/learn2learn); there PRISM_REQUIRE_LEARN2LEARN=1."""
    if os.environ.get("PRISM_REQUIRE_LEARN2LEARN") == "1":
        import learn2learn  # noqa: F401  (must import in that environment)
        return
    pytest.importorskip("learn2learn")


class Scalar(nn.Module):
    """logits = w * image: a one-parameter model to check MAML against hand-derived gradients."""

    def __init__(self, w: float) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor(w, dtype=torch.float64))

    def forward(self, image, mask):
        return SegOutput(logits=self.w * image)


def scalar_batch(value: float) -> Batch:
    image = torch.full((1, 1, 1, 1, 1), value, dtype=torch.float64)
    return Batch(image=image, label=torch.zeros(1, 1, 1, 1, dtype=torch.long),
                 mask=torch.ones(1, 1, dtype=torch.bool), availability=torch.ones(1, 1, dtype=torch.bool))


def quadratic(target: float):
    """L = 0.5 (logits - target)^2 summed: for logits = w x this is 0.5 (w x - target)^2."""
    return lambda out, batch: 0.5 * ((out.logits - target) ** 2).sum()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("first_order", [False, True])
def test_one_step_maml_gradient_by_hand(backend, first_order):
    w, lr, a, b, c, d = 0.7, 0.1, 2.0, 1.5, 3.0, -0.5
    model = Scalar(w)
    support, query = scalar_batch(a), scalar_batch(c)
    # support: L_s = 0.5 (w a - b)^2 -> w' = w - lr a (w a - b); query: L_q = 0.5 (w' c - d)^2
    inner = make_inner_loop(backend, model, inner_lr=lr, learn_inner_lr=False, first_order=first_order)

    def loss_fn(out, batch):
        return quadratic(b if batch is support else d)(out, batch)

    inner.query_loss(support, query, loss_fn, steps=1).backward()
    w_fast = w - lr * a * (w * a - b)
    dq = (w_fast * c - d) * c
    expected = dq if first_order else dq * (1 - lr * a * a)
    assert model.w.grad.item() == pytest.approx(expected, rel=1e-12)


def test_meta_sgd_learns_the_inner_rate_by_hand():
    w, lr, a, b, c, d = 0.7, 0.1, 2.0, 1.5, 3.0, -0.5
    model = Scalar(w)
    support, query = scalar_batch(a), scalar_batch(c)
    inner = make_inner_loop("torch", model, inner_lr=lr, learn_inner_lr=True, first_order=False)
    loss = inner.query_loss(support, query, lambda o, bt: quadratic(b if bt is support else d)(o, bt), steps=1)
    loss.backward()
    (alpha,) = list(inner.extra_parameters())
    g_s = a * (w * a - b)
    w_fast = w - lr * g_s
    # dL_q/dalpha = (w' c - d) c * (-g_s)
    assert alpha.grad.item() == pytest.approx((w_fast * c - d) * c * (-g_s), rel=1e-12)


def network_case():
    torch.manual_seed(0)
    model = create_backbone("multi_unet", BRATS_MODALITIES, 3, width=2, depth=2).double().train()
    model.request_parts({"logits"})
    g = torch.Generator().manual_seed(1)

    def batch():
        image = torch.randn(1, 4, 8, 8, 8, generator=g, dtype=torch.float64)
        mask = torch.tensor([[True, False, True, True]])
        return Batch(image=image, label=torch.randint(0, 3, (1, 8, 8, 8), generator=g), mask=mask,
                     availability=torch.ones(1, 4, dtype=torch.bool))

    return model, batch(), batch()


def meta_gradient(backend, first_order, steps, learn_inner_lr=False):
    model, support, query = network_case()
    inner = make_inner_loop(backend, model, inner_lr=0.05, learn_inner_lr=learn_inner_lr, first_order=first_order)
    loss = inner.query_loss(support, query, lambda out, b: dice_ce_loss(out.logits, b.label), steps)
    loss.backward()
    grads = [p.grad.clone() for p in model.parameters()]
    grads += [p.grad.clone() for p in inner.extra_parameters()]
    return grads


@pytest.mark.parametrize("first_order, steps", [(True, 1), (False, 1), (False, 2)])
def test_torch_and_higher_agree_in_float64(first_order, steps):
    a = meta_gradient("torch", first_order, steps)
    b = meta_gradient("higher", first_order, steps)
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-12)


def test_first_and_second_order_differ():
    a, b = meta_gradient("torch", True, 1), meta_gradient("torch", False, 1)
    assert any(not torch.allclose(x, y) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("first_order, steps", [(True, 1), (False, 1), (False, 2)])
def test_learn2learn_maml_agrees_with_torch(first_order, steps):
    learn2learn_or_skip()
    a = meta_gradient("torch", first_order, steps)
    b = meta_gradient("learn2learn", first_order, steps)
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-12)


def test_learn2learn_metasgd_agrees_with_torch():
    learn2learn_or_skip()
    a = meta_gradient("torch", False, 1, learn_inner_lr=True)
    b = meta_gradient("learn2learn", False, 1, learn_inner_lr=True)
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-12)


def test_higher_refuses_meta_sgd():
    from prism.errors import ConfigError

    with pytest.raises(ConfigError, match="'higher' does not learn inner learning rates"):
        make_inner_loop("higher", Scalar(1.0), inner_lr=0.1, learn_inner_lr=True, first_order=False)
    with pytest.raises(ConfigError, match="unknown MAML backend 'jax'"):
        make_inner_loop("jax", Scalar(1.0), inner_lr=0.1, learn_inner_lr=False, first_order=False)
