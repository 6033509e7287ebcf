"""The adaptation API (prism.adapt, Strategy.adapt): functional, hand-computed, partial, Meta-SGD's rates."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from prism.adapt import adapted_copy, fine_tune, gradient_steps, select_parameters
from prism.backbone import Backbone
from prism.batch import Batch
from prism.errors import ConfigError
from prism.modalities import BRATS_MODALITIES
from prism.outputs import SegOutput
from prism.registry import create_backbone, get_registry, list_plugins


class TwoLayer(Backbone):
    """logits = head(body * x): a body scale and a 1x1x1 head, small enough to differentiate by hand."""

    provides = frozenset({"logits", "features"})

    def __init__(self) -> None:
        super().__init__(("a",), 2)
        self.body = nn.Parameter(torch.tensor(1.5, dtype=torch.float64))
        self.head = nn.Conv3d(1, 2, 1).double()
        with torch.no_grad():
            self.head.weight.copy_(torch.tensor([0.5, -0.25], dtype=torch.float64).view(2, 1, 1, 1, 1))
            self.head.bias.zero_()

    def forward(self, image, mask):
        features = self.body * image
        return SegOutput(logits=self.head(features), features=features)


def batch(value: float) -> Batch:
    image = torch.full((1, 1, 1, 1, 1), value, dtype=torch.float64)
    return Batch(image=image, label=torch.ones(1, 1, 1, 1, dtype=torch.long),
                 mask=torch.ones(1, 1, dtype=torch.bool), availability=torch.ones(1, 1, dtype=torch.bool))


def linear_loss(out, b):
    """L = sum(logits[:, 1] - logits[:, 0]): gradients are constant, so K steps have a closed form."""
    return (out.logits[:, 1] - out.logits[:, 0]).sum()


def test_head_and_body_partition_every_backbone():
    for name in list_plugins("backbone"):
        model = create_backbone(name, BRATS_MODALITIES, 4, width=4)
        head, body = select_parameters(model, "head"), select_parameters(model, "body")
        everything = select_parameters(model, "all")
        assert head and body and not set(head) & set(body), name
        assert sorted(head + body) == sorted(everything), name
        for n in head:  # heads map to the classes
            module = model.get_submodule(n.rsplit(".", 1)[0])
            assert getattr(module, "out_channels", None) == 4, (name, n)


def test_selection_errors_name_the_field():
    model = TwoLayer()
    with pytest.raises(ConfigError, match="adapt_params: 'tail' is neither"):
        select_parameters(model, "tail")
    with pytest.raises(ConfigError, match="selects none"):
        select_parameters(model, ["decoder.*"])
    assert select_parameters(model, ["head.w*"]) == ["head.weight"]


def test_fine_tune_is_functional_and_matches_the_hand_computed_update():
    model = TwoLayer()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    x, lr, k = 2.0, 0.1, 3
    weights = fine_tune(model, [batch(x)], linear_loss, steps=k, lr=lr)
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]), f"{n} changed: adaptation must leave the model alone"
    # dL/dbody = x (w1 - w0); dL/dw = body x (-1, +1); dL/db = (-1, +1). K steps of SGD, by hand:
    body, w, bias = 1.5, torch.tensor([0.5, -0.25], dtype=torch.float64), torch.zeros(2, dtype=torch.float64)
    sign = torch.tensor([-1.0, 1.0], dtype=torch.float64)
    for _ in range(k):
        g_body, g_w, g_b = x * float(w[1] - w[0]), body * x * sign, sign
        body, w, bias = body - lr * g_body, w - lr * g_w, bias - lr * g_b
    assert weights["body"].item() == pytest.approx(body, abs=1e-12)
    torch.testing.assert_close(weights["head.weight"].flatten(), w, rtol=0, atol=1e-12)
    torch.testing.assert_close(weights["head.bias"], bias, rtol=0, atol=1e-12)
    copy_ = adapted_copy(model, weights)
    assert copy_.body.item() == pytest.approx(body) and model.body.item() == 1.5


def test_partial_adaptation_changes_only_the_selected_parameters():
    model = TwoLayer()
    head_only = fine_tune(model, [batch(2.0)], linear_loss, steps=2, lr=0.1, params="head")
    assert set(head_only) == {"head.weight", "head.bias"}
    body_only = fine_tune(model, [batch(2.0)], linear_loss, steps=1, lr=0.1, params="body")
    assert set(body_only) == {"body"} and body_only["body"].item() == pytest.approx(1.5 - 0.1 * 2.0 * -0.75)
    copy_ = adapted_copy(model, head_only)
    assert copy_.body.item() == 1.5 and not torch.equal(copy_.head.weight, model.head.weight)


def test_gradient_steps_is_differentiable_for_second_order():
    model = TwoLayer()
    start = {"body": model.body}
    fast, _ = gradient_steps(model, start, [batch(2.0)], lambda o, b: (o.logits[:, 1] ** 2).sum(), 1, 0.1,
                             create_graph=True)
    # body' = body - lr * d/dbody (w1 body x)^2 = body - lr * 2 w1^2 x^2 body = body (1 - 0.2 * 0.0625 * 4)
    (grad,) = torch.autograd.grad(fast["body"], model.body)
    assert grad.item() == pytest.approx(1 - 0.1 * 2 * 0.0625 * 4)


def _strategy(name, **options):
    return get_registry().create("strategy", name, **options)


def test_maml_adapts_with_its_inner_rate_steps_and_parameters():
    model = TwoLayer()
    maml = _strategy("maml", inner_steps=2, inner_lr=0.05, adapt_params="head")
    got = maml.adapt(model, [batch(2.0)], linear_loss)
    expected = fine_tune(model, [batch(2.0)], linear_loss, steps=2, lr=0.05, params="head")
    assert set(got) == {"head.weight", "head.bias"}
    for n in got:
        torch.testing.assert_close(got[n], expected[n], rtol=0, atol=0)
    assert model.head.bias.abs().sum() == 0  # untouched


def test_meta_sgd_adaptation_uses_the_learned_rates_clamped_at_zero():
    model = TwoLayer()
    maml = _strategy("maml", inner_steps=1, inner_lr=0.05, learn_inner_lr=True)
    rates = {"body": torch.tensor(0.2, dtype=torch.float64),
             "head__weight": torch.tensor([0.1, -0.3], dtype=torch.float64).view(2, 1, 1, 1, 1),
             "head__bias": torch.tensor([0.0, 0.4], dtype=torch.float64)}
    maml.load_state_dict({"inner": rates})  # as a checkpoint gives them, before any training context exists
    got = maml.adapt(model, [batch(2.0)], linear_loss)
    x, sign = 2.0, torch.tensor([-1.0, 1.0], dtype=torch.float64)
    assert got["body"].item() == pytest.approx(1.5 - 0.2 * x * (-0.25 - 0.5))
    w = torch.tensor([0.5, -0.25], dtype=torch.float64) - torch.tensor([0.1, 0.0]).double() * 1.5 * x * sign
    torch.testing.assert_close(got["head.weight"].flatten(), w)  # the negative rate counts as 0
    torch.testing.assert_close(got["head.bias"], -torch.tensor([0.0, 0.4], dtype=torch.float64) * sign)


def test_reptile_adapts_with_its_inner_optimizer():
    model = TwoLayer()
    reptile = _strategy("reptile", inner_steps=3, inner_lr=0.1, inner_optimizer="sgd", adapt_params="body")
    got = reptile.adapt(model, [batch(2.0)], linear_loss)
    assert set(got) == {"body"}
    assert got["body"].item() == pytest.approx(1.5 - 3 * 0.1 * 2.0 * (-0.75))
    assert model.body.item() == 1.5


@pytest.mark.parametrize("name", list_plugins("strategy"))
def test_every_strategy_adapts_functionally(name):
    strategy = _strategy(name)
    model = strategy.prepare_model(TwoLayer())
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    got = strategy.adapt(model, [batch(2.0), batch(-1.0)], linear_loss, steps=2)
    assert got and all(n in before for n in got)
    assert any(not torch.equal(got[n], before[n]) for n in got)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


def _adam_moves(g: torch.Tensor, lr: float, steps: int) -> torch.Tensor:
    """Adam under a constant gradient ``g``: the bias-corrected moments are g and g^2 at every step (any beta1), so
    each step moves ``lr * g / (|g| + eps)`` (Kingma and Ba, 2015, Algorithm 1)."""
    return steps * lr * g / (g.abs() + 1e-8)


def test_fine_tune_with_a_torch_optimizer_matches_adam_by_hand():
    """On the head alone the linear loss has constant gradients: dL/dw = body x (-1, +1), dL/db = (-1, +1)."""
    model = TwoLayer()
    x, lr, k = 2.0, 0.05, 3
    got = fine_tune(model, [batch(x)], linear_loss, steps=k, lr=lr, params="head", optimizer=torch.optim.Adam)
    sign = torch.tensor([-1.0, 1.0], dtype=torch.float64)
    w = torch.tensor([0.5, -0.25], dtype=torch.float64) - _adam_moves(1.5 * x * sign, lr, k)
    torch.testing.assert_close(got["head.weight"].flatten(), w, rtol=0, atol=1e-12)
    torch.testing.assert_close(got["head.bias"], -_adam_moves(sign, lr, k), rtol=0, atol=1e-12)
    assert model.head.bias.abs().sum() == 0 and not got["head.bias"].requires_grad


def test_reptile_adam_adapts_with_beta1_zero_by_hand():
    model = TwoLayer()
    reptile = _strategy("reptile", inner_steps=2, inner_lr=0.1, inner_optimizer="adam", adapt_params="head")
    got = reptile.adapt(model, [batch(2.0)], linear_loss)
    sign = torch.tensor([-1.0, 1.0], dtype=torch.float64)
    torch.testing.assert_close(got["head.bias"], -_adam_moves(sign, 0.1, 2), rtol=0, atol=1e-12)


def test_a_torch_optimizer_refuses_meta_sgd_rates_and_second_order():
    model = TwoLayer()
    with pytest.raises(ValueError, match="torch optimizer"):
        fine_tune(model, [batch(2.0)], linear_loss, steps=1, lr={"body": torch.tensor(0.1)}, params="body",
                  optimizer=torch.optim.SGD)
    with pytest.raises(ValueError, match="torch optimizer"):
        gradient_steps(model, {"body": model.body}, [batch(2.0)], linear_loss, 1, 0.1, create_graph=True,
                       optimizer=torch.optim.SGD)


def test_fp16_adaptation_scales_the_loss_and_retries_an_overflowing_step():
    """Under fp16 autocast the loss is scaled like GradScaler's first scale (2^16); the gradient of the linear
    loss at the fp16 logits is then 2^16, beyond fp16's largest value, so the first try overflows, the scale is
    halved and the step taken again: the result is the full-precision one, not a skipped step or NaN."""
    from prism.adapt import precision

    model = TwoLayer().float()
    support = [Batch(image=b.image.float(), label=b.label, mask=b.mask, availability=b.availability)
               for b in (batch(2.0), batch(-1.0))]
    full = fine_tune(model, support, linear_loss, steps=3, lr=0.1, params="head")
    with precision("cpu", torch.float16):
        out = model(support[0].image, support[0].mask)
        assert out.logits.dtype == torch.float16
        overflow = torch.autograd.grad(linear_loss(out, support[0]) * 2.0**16, model.head.bias)[0]
        assert not torch.isfinite(overflow).all()  # what an unscaled retry would have kept
        half = fine_tune(model, support, linear_loss, steps=3, lr=0.1, params="head")
    for n in full:
        assert torch.isfinite(half[n]).all()
        torch.testing.assert_close(half[n], full[n], rtol=1e-3, atol=1e-3)
        assert not torch.equal(half[n], model.get_parameter(n).detach())

    # a loss 1e-8 times as large has fp16 gradients below fp16's smallest value: unscaled they would be 0
    def tiny_loss(out, b):
        return 1e-8 * linear_loss(out, b)

    full = fine_tune(model, support, tiny_loss, steps=1, lr=0.1, params="head")
    with precision("cpu", torch.float16):
        unscaled = torch.autograd.grad(tiny_loss(model(support[0].image, support[0].mask), support[0]),
                                       model.head.bias)[0]
        assert (unscaled == 0).all()
        half = fine_tune(model, support, tiny_loss, steps=1, lr=0.1, params="head")
    torch.testing.assert_close(half["head.bias"], full["head.bias"], rtol=1e-2, atol=0)
    assert (half["head.bias"] != 0).all()
