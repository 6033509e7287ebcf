"""Every registered loss term (third-party ones included) through the conformance kit's loss suite
(``prism.testing.check_loss``), on a backbone that provides its needs.

Second-order MAML through every term stays finite when classes are absent from a sample (a check of the suite).

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

from prism.registry import create_loss, list_plugins
from prism.testing import LOSS_CHECKS, check_loss

MODS = ("flair", "t1ce", "t1", "t2")
#: Extra option sets whose second order is checked besides each term's defaults (the full suite's).
VARIANTS = {
    "proto_l2": [{"variant": "passion", "preference": True}],
    "prism": [{"gss": True, "preference": True, "proto_variant": "passion", "pixel_kl_variant": "passion"},
              "passion_brats2020_mr2468"],
}
CASES = [(n, o) for n, opts in VARIANTS.items() for o in opts]


def preset_loss_options(case: dict | str) -> dict:
    """A case's options: a dict, or the name of a preset whose first loss term's options are taken (with
    ``missing_rates: from_split`` resolved on PASSION's mr2468 training split, as a run resolves it)."""
    if isinstance(case, dict):
        return case
    from test_losses_passion import preset_options

    return preset_options(case)


@pytest.mark.parametrize(("name", "options"), CASES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(CASES)])
def test_second_order_maml_is_finite_with_absent_classes(name, options):
    others = [c for c in LOSS_CHECKS if c not in ("builds", "value_contract", "second_order_finite")]
    check_loss(name, options=preset_loss_options(options), skip=others)


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
    ("uni", {"smoth_nr": 1.0}, r"smoth_nr: unknown option of loss 'uni'.*did you mean 'smooth_nr'"),
    ("uni", {"lambda_dice": "abc"}, r"lambda_dice: loss 'uni'.*valid number"),
    ("uni", {"lambda_dice": -1.0}, r"lambda_dice: loss 'uni'.*greater than or equal to 0"),
    ("prm", {"label_resample": "bilinear"}, r"label_resample: loss 'prm'.*'maxpool', 'nearest' or 'upsample'"),
    ("pixel_kl", {"temperature": 0}, r"temperature: loss 'pixel_kl'.*greater than 0"),
    ("pixel_kl", {"clamped_weight": True}, r"clamped_weight=true needs prob_floor"),
    ("prism", {"gss_options": {"ancor": "t2"}}, r"gss_options.ancor: loss 'prism'.*[Ee]xtra inputs"),
    ("prism", {"pixel_kl_options": {"deep_weights": [0.5, -1]}}, r"pixel_kl_options.deep_weights.1: loss 'prism'"),
    ("prism", {"missing_rates": "from_split"}, r"from_split.*resolved from the training split"),
    ("proto_l2", {"preference": True, "gama": 0.1}, r"gama: unknown option of loss 'proto_l2'"),
    ("proto_l2", {"preference": True, "preference_options": {"gama": 0.1}},
     r"preference_options.gama: loss 'proto_l2'.*[Ee]xtra inputs"),
    ("proto_l2", {"preference": True, "missing_rates": {"flare": 0.5}}, r"unknown modalities \['flare'\]"),
    ("proto_l2", {"preference": True, "missing_rates": [0.5, 1.0, 0.0, 0.0]}, r"missing_rates(.1)?: .*less than 1"),
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


# ---- the registry-wide contract: every registered loss term on a backbone that provides its needs ----------------

#: Parts a built-in term reads as a detached teacher: they must receive no gradient from it.
TEACHER_PARTS = {"pixel_kl": {"logits", "deep"}, "proto_l2": {"features"}}
#: Options under which a stateful built-in term carries state.
STATEFUL = {"proto_l2": {"preference": True}, "prism": {"preference": True, "gss": True}}


@pytest.mark.parametrize("name", list_plugins("loss"))
def test_term_passes_the_conformance_suite(name):
    """Reads only its needs, finite, gradients where they belong, batch-order invariant, deterministic, state
    round trip, second order finite, device move."""
    report = check_loss(name, options=STATEFUL.get(name), detached=TEACHER_PARTS.get(name, ()),
                        stateful=name in STATEFUL)
    assert report.passed == list(LOSS_CHECKS)


# ---- every option of every built-in loss: typed, bounded, described, in the generated reference ------------------

def _builtin_losses():
    from prism.registry import get_registry
    from prism.registry.core import BUILTIN_DISTRIBUTION

    return [e for e in get_registry().entries("loss") if e.distribution == BUILTIN_DISTRIBUTION]


def _numeric(ann) -> bool:
    import typing

    base = typing.get_args(ann)[0] if typing.get_origin(ann) is typing.Annotated else ann
    return base in (int, float)


def _bounds(ann) -> list:
    import typing

    if typing.get_origin(ann) is not typing.Annotated:
        return []
    return [m for meta in typing.get_args(ann)[1:] for m in getattr(meta, "metadata", [])]


def test_every_builtin_loss_option_is_typed_bounded_and_described():
    import sys
    import typing
    from pathlib import Path

    from typing_extensions import is_typeddict

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "docs" / "_gen"))
    from gen_reference import md_escape, option_description, option_group, plugins_page

    page = plugins_page()
    entries = _builtin_losses()
    assert {"fuse", "uni", "prm", "pixel_kl", "proto_l2", "gss", "prism", "rfnet_sep"} <= {e.name for e in entries}
    for e in entries:
        params = list(inspect.signature(e.factory).parameters.values())[3:]  # after self, modalities, classes
        assert all(p.kind is not p.VAR_KEYWORD for p in params), f"{e.name} takes **kwargs"
        hints = typing.get_type_hints(e.factory.__init__, include_extras=True)
        for p in params:
            ann = hints[p.name]
            what = f"loss '{e.name}' option '{p.name}'"
            description = option_description(ann)
            assert description, f"{what} has no description"
            assert md_escape(description) in page, f"{what}: not in the generated reference"
            if _numeric(ann):
                assert _bounds(ann), f"{what} is a number without limits"
            group = option_group(ann)
            if group is not None:
                assert is_typeddict(group)
                for key, key_ann in typing.get_type_hints(group, include_extras=True).items():
                    assert option_description(key_ann), f"{what}.{key} has no description"


def test_bad_option_is_refused_when_the_run_is_built_not_at_step_one():
    from prism.config import build_config
    from prism.engine.builder import build_parts
    from prism.errors import PluginError

    config = build_config(None, ["losses.0.name=uni", "losses.0.options.lambda_dice=abc"])
    with pytest.raises(PluginError, match=r"^losses.0.options.lambda_dice: loss 'uni' .*valid number"):
        build_parts(config, MODS, 3)
