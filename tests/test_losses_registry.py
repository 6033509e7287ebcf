"""One suite over every registered loss term (third-party ones included), on a backbone that provides its needs.

Second-order MAML through every term stays finite when classes are absent from a sample.

The prototype similarity normalises class prototypes; an absent class has a zero prototype, whose normalisation
has a NaN second derivative under ``F.normalize`` (masking afterwards leaves ``0 * NaN``). Checked here: one inner
SGD step with ``create_graph=True``, the query loss at the adapted weights, ``backward`` to the initial weights.
"""

from __future__ import annotations

import inspect
import re

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from prism.batch import Batch
from prism.registry import create_backbone, create_loss, get_registry, list_plugins

MODS = ("flair", "t1ce", "t1", "t2")
#: Small options for the built-in backbones (only those a constructor takes are passed).
SMALL = {"width": 4, "depth": 3, "dim": 16}
#: Backbones tried first, smallest first; any registered backbone that provides the needs is used otherwise.
PREFERRED = ("unet", "multi_unet", "rfnet", "shaspec")


def backbone_for(needs: frozenset[str], loss: str = "") -> tuple[str, dict]:
    """A registered backbone providing ``needs`` (the smallest preferred one) and its small options."""
    reg = get_registry()
    entries = {e.name: e for e in reg.entries("backbone")}
    fitting = [n for n, e in entries.items() if needs <= e.provides]
    if not fitting:
        pytest.skip(f"no registered backbone provides {sorted(needs)}")
    name = min(fitting, key=lambda n: (PREFERRED.index(n) if n in PREFERRED else len(PREFERRED), n))
    params = inspect.signature(entries[name].factory).parameters
    return name, {k: v for k, v in SMALL.items() if k in params}
#: Extra option sets exercised besides each term's defaults.
VARIANTS = {
    "proto_l2": [{"variant": "passion", "preference": True}],
    "prism": [{"gss": True, "preference": True, "proto_variant": "passion", "pixel_kl_variant": "passion"}],
}
CASES = [(name, {}) for name in list_plugins("loss")] + [(n, o) for n, opts in VARIANTS.items() for o in opts]


def absent_class_batch(size: int) -> Batch:
    """Two samples, three classes: class 2 absent everywhere, class 1 only in sample 0; modalities missing."""
    g = torch.Generator().manual_seed(3)
    label = torch.zeros(2, size, size, size, dtype=torch.long)
    label[0, : size // 2] = 1
    mask = torch.tensor([[True, True, False, True], [True, False, True, False]])
    return Batch(torch.randn(2, 4, size, size, size, generator=g), label, mask, mask.clone())


@pytest.mark.parametrize(("name", "options"), CASES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(CASES)])
def test_second_order_maml_is_finite_with_absent_classes(name, options):
    backbone, backbone_options = backbone_for(get_registry().get("loss", name).needs, name)
    torch.manual_seed(0)
    model = create_backbone(backbone, MODS, 3, **backbone_options)
    model.train()
    loss = create_loss(name, MODS, 3, **options)
    size = max(8, model.size_divisor)
    batch = absent_class_batch(size)
    params = dict(model.named_parameters())
    support = loss(functional_call(model, params, (batch.image, batch.mask)), batch).total
    grads = torch.autograd.grad(support, list(params.values()), create_graph=True, allow_unused=True)
    fast = {k: p if g is None else p - 0.1 * g for (k, p), g in zip(params.items(), grads, strict=True)}
    query = loss(functional_call(model, fast, (batch.image, batch.mask)), batch).total
    assert torch.isfinite(query)
    query.backward()
    got = {k: p.grad for k, p in model.named_parameters() if p.grad is not None}
    assert got, "no gradient reached the initial weights"
    bad = sorted(k for k, g in got.items() if not torch.isfinite(g).all())
    assert not bad, f"non-finite meta-gradients in {bad[:5]}"


def test_safe_normalize_matches_f_normalize_and_is_finite_at_zero():
    from prism.plugins.losses.prototypes import safe_normalize

    x = torch.randn(3, 5, 4, dtype=torch.float64)
    x[1, :, 2] = 0.0  # a zero vector along dim 1
    x[2, :, 0] = 1e-10  # below eps
    a = x.clone().requires_grad_()
    b = x.clone().requires_grad_()
    ya, yb = safe_normalize(a, 1, 1e-8), F.normalize(b, dim=1, eps=1e-8)
    torch.testing.assert_close(ya, yb)
    w = torch.randn_like(x)
    (ga,) = torch.autograd.grad((ya * w).sum(), a, create_graph=True)
    (gb,) = torch.autograd.grad((yb * w).sum(), b, create_graph=True)
    torch.testing.assert_close(ga, gb)  # first derivatives agree
    (hb,) = torch.autograd.grad(gb.square().sum(), b)
    (ha,) = torch.autograd.grad(ga.square().sum(), a)
    assert not torch.isfinite(hb).all()  # the failure being guarded against
    assert torch.isfinite(ha).all()
    nonzero = x.norm(dim=1, keepdim=True).expand_as(x) > 1e-8
    torch.testing.assert_close(ha[nonzero], hb[nonzero])  # same second derivative away from the clamp


@pytest.mark.parametrize(("name", "options", "match"), [
    ("prism", {"beta": [0.5, 0.5]}, r"beta has 2 values for modalities"),
    ("uni", {"smoth_nr": 1.0}, r"loss 'uni': unknown option 'smoth_nr'; did you mean 'smooth_nr'"),
    ("prism", {"gss_options": {"ancor": "t2"}}, r"gss_options: unknown option 'ancor'; did you mean 'anchor'"),
    ("proto_l2", {"preference": True, "gama": 0.1}, r"preference options: unknown option 'gama'"),
    ("proto_l2", {"preference": True, "missing_rates": {"flare": 0.5}}, r"unknown modalities \['flare'\]"),
    ("proto_l2", {"preference": True, "missing_rates": [0.5, 1.0, 0.0, 0.0]}, r"missing rates must lie in"),
])
def test_bad_loss_options_are_one_line_user_errors(name, options, match):
    from prism.errors import PluginBug, PluginError

    try:
        create_loss(name, MODS, 3, **options)
    except PluginBug as exc:  # pragma: no cover - the failure this test guards against
        pytest.fail(f"a bad option became a plugin bug: {exc}")
    except PluginError as exc:
        assert "\n" not in str(exc) and f"loss '{name}'" in str(exc)
        assert re.search(match, str(exc)), str(exc)
    else:
        pytest.fail("bad option accepted")
