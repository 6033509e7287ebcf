"""One suite over every registered loss term (third-party ones included), on a backbone that provides its needs.

Second-order MAML through every term stays finite when classes are absent from a sample.

The prototype similarity normalises class prototypes; an absent class has a zero prototype, whose normalisation
has a NaN second derivative under ``F.normalize`` (masking afterwards leaves ``0 * NaN``). Checked here: one inner
SGD step with ``create_graph=True``, the query loss at the adapted weights, ``backward`` to the initial weights.
"""

from __future__ import annotations

import dataclasses
import inspect
import io
import re

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from prism.batch import Batch
from prism.registry import create_backbone, create_loss, get_registry, list_plugins

MODS = ("flair", "t1ce", "t1", "t2")
#: Small options for the built-in backbones (only those a constructor takes are passed).
SMALL = {"width": 2, "depth": 3, "dim": 16}
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
    "prism": [{"gss": True, "preference": True, "proto_variant": "passion", "pixel_kl_variant": "passion"},
              "passion_brats2020_mr2468"],
}
CASES = [(name, {}) for name in list_plugins("loss")] + [(n, o) for n, opts in VARIANTS.items() for o in opts]


def preset_loss_options(case: dict | str) -> dict:
    """A case's options: a dict, or the name of a preset whose first loss term's options are taken (with
    ``missing_rates: from_split`` resolved on PASSION's mr2468 training split, as a run resolves it)."""
    if isinstance(case, dict):
        return case
    from test_losses_passion import preset_options

    return preset_options(case)


def absent_class_batch(size: int) -> Batch:
    """Two samples, three classes: class 2 absent everywhere, class 1 only in sample 0; modalities missing."""
    g = torch.Generator().manual_seed(3)
    label = torch.zeros(2, size, size, size, dtype=torch.long)
    label[0, : size // 2] = 1
    mask = torch.tensor([[True, True, False, True], [True, False, True, False]])
    return Batch(torch.randn(2, 4, size, size, size, generator=g), label, mask, mask.clone())


@pytest.mark.parametrize(("name", "options"), CASES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(CASES)])
def test_second_order_maml_is_finite_with_absent_classes(name, options):
    loss = create_loss(name, MODS, 3, **preset_loss_options(options))
    backbone, backbone_options = backbone_for(loss.needs, name)
    torch.manual_seed(0)
    model = create_backbone(backbone, MODS, 3, **backbone_options)
    model.train()
    model.request_parts(loss.needs)
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
    ("proto_l2", {"preference": True, "missing_rates": [0.5, 1.0, 0.0, 0.0]}, r"missing_rates.1: .*less than 1"),
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
TERMS = list_plugins("loss")


def term_output(name: str, options: dict | None = None, seed: int = 0):
    """(term, output holding only the term's needs as grad-requiring leaves, batch, leaves by part)."""
    backbone, backbone_options = backbone_for(get_registry().get("loss", name).needs, name)
    torch.manual_seed(seed)
    model = create_backbone(backbone, MODS, 3, **backbone_options).train()
    term = create_loss(name, MODS, 3, **(options or {}))
    model.request_parts(term.needs)
    batch = absent_class_batch(max(8, model.size_divisor))
    with torch.no_grad():
        out = model(batch.image, batch.mask)
    leaves: dict[str, list[torch.Tensor]] = {}

    def cut(part: str, value):
        if isinstance(value, torch.Tensor):
            leaf = value.detach().clone().requires_grad_(True)
            leaves.setdefault(part, []).append(leaf)
            return leaf
        return [cut(part, v) for v in value]

    keep = {p: (cut(p, out.part(p)) if p in term.needs else None) for p in out.part_names()}
    keep["logits"] = keep["logits"] if keep["logits"] is not None else out.logits.detach()
    return term, dataclasses.replace(out, **keep), batch, leaves


def permuted(out, batch: Batch, perm: torch.Tensor):
    def p(value):
        if isinstance(value, torch.Tensor):
            return value[perm]
        return None if value is None else [p(v) for v in value]

    return (dataclasses.replace(out, **{n: p(out.part(n)) for n in out.part_names()}),
            Batch(batch.image[perm], batch.label[perm], batch.mask[perm], batch.availability[perm]))


@pytest.mark.parametrize("name", TERMS)
def test_term_reads_only_its_needs_is_finite_and_sends_gradients_where_they_belong(name):
    term, out, batch, leaves = term_output(name, STATEFUL.get(name))
    result = term(out, batch)
    assert result.total.dim() == 0 and torch.isfinite(result.total)
    assert all(torch.isfinite(v).all() for v in result.parts.values())
    result.total.backward()
    b, m = batch.mask.shape
    reached = set()
    for part, tensors in leaves.items():
        for t in tensors:
            if t.grad is None:
                continue
            assert torch.isfinite(t.grad).all(), f"{part}: non-finite gradient"
            if t.grad.any():
                reached.add(part)
            if t.dim() >= 2 and tuple(t.shape[:2]) == (b, m):  # a per-modality part: missing ones learn nothing
                assert not t.grad[~batch.mask].any(), f"{part}: gradient reaches a missing modality"
    teachers = TEACHER_PARTS.get(name, set())
    assert not (reached & teachers), f"detached teacher parts {sorted(reached & teachers)} received gradients"
    assert reached, "no part received a gradient"


@pytest.mark.parametrize("name", TERMS)
def test_term_is_invariant_to_the_order_of_the_batch(name):
    options = STATEFUL.get(name)
    term, out, batch, _ = term_output(name, options)
    other = create_loss(name, MODS, 3, **(options or {}))
    a = term(out, batch)
    b = other(*permuted(out, batch, torch.tensor([1, 0])))
    torch.testing.assert_close(a.total, b.total, rtol=1e-5, atol=1e-6)
    assert set(a.parts) == set(b.parts)
    for key in a.parts:
        torch.testing.assert_close(a.parts[key], b.parts[key], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", TERMS)
def test_term_state_round_trips_through_a_weights_only_checkpoint(name):
    options = STATEFUL.get(name)
    term, out, batch, _ = term_output(name, options)
    for _ in range(2):
        term(out, batch)
        term.on_epoch_end()
    term(out, batch)  # statistics of an unfinished epoch are part of the state
    state = term.state_dict()
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)
    fresh = create_loss(name, MODS, 3, **(options or {}))
    if name in STATEFUL:
        assert fresh.state_dict() != state, "the state did not change over two epochs"
    fresh.load_state_dict(loaded)
    assert fresh.state_dict() == state
    torch.testing.assert_close(fresh(out, batch).total, term(out, batch).total)
    fresh.on_epoch_end()
    term.on_epoch_end()
    assert fresh.state_dict() == term.state_dict()


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
