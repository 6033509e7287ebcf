"""Registered loss terms: names and needs, the prism total, preference state, multi_unet outputs."""

from __future__ import annotations

import io

import pytest
import torch

from prism.batch import Batch
from prism.outputs import SegOutput
from prism.registry import create_backbone, create_loss, get_registry

MODS = ("flair", "t1ce", "t1", "t2")
NEEDS = {
    "fuse": {"logits"}, "uni": {"uni"}, "prm": {"deep"}, "pixel_kl": {"logits", "uni"},
    "proto_l2": {"features", "uni_features"}, "gss": {"uni"},
    "prism": {"logits", "deep", "uni", "uni_deep", "features", "uni_features"},
}
OPTIONS = {"prism": {"gss": True, "preference": True}, "proto_l2": {"preference": True}}


def _batch(b: int = 3, size: int = 4, k: int = 3, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    mask = torch.tensor([[True, False, True, True], [False, True, False, False], [True, True, True, True]])[:b]
    label = torch.randint(0, k, (b, size, size, size), generator=g)
    return Batch(torch.randn(b, 4, size, size, size, generator=g), label, mask, torch.ones(b, 4, dtype=torch.bool))


def _output(b: int = 3, size: int = 4, k: int = 3, c: int = 5, seed: int = 1) -> SegOutput:
    g = torch.Generator().manual_seed(seed)

    def r(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g).requires_grad_()

    h = size // 2
    return SegOutput(logits=r(b, k, size, size, size), deep=[r(b, k, h, h, h)], uni=r(b, 4, k, size, size, size),
                     uni_deep=[r(b, 4, k, h, h, h)], features=r(b, c, size, size, size),
                     uni_features=r(b, 4, c, size, size, size))


def _permuted(out: SegOutput, batch: Batch, perm: torch.Tensor) -> tuple[SegOutput, Batch]:
    p = SegOutput(logits=out.logits[perm], deep=[d[perm] for d in out.deep], uni=out.uni[perm],
                  uni_deep=[d[perm] for d in out.uni_deep], features=out.features[perm],
                  uni_features=out.uni_features[perm])
    return p, Batch(batch.image[perm], batch.label[perm], batch.mask[perm], batch.availability[perm])


@pytest.mark.parametrize("name", sorted(NEEDS))
def test_registered_with_needs(name):
    entry = get_registry().get("loss", name)
    assert entry.needs == frozenset(NEEDS[name])


@pytest.mark.parametrize("name", sorted(NEEDS))
def test_batch_permutation_invariance(name):
    out, batch = _output(), _batch()
    a = create_loss(name, MODS, 3, **OPTIONS.get(name, {}))(out, batch)
    b = create_loss(name, MODS, 3, **OPTIONS.get(name, {}))(*_permuted(out, batch, torch.tensor([2, 0, 1])))
    torch.testing.assert_close(a.total, b.total)
    assert set(a.parts) == set(b.parts)


@pytest.mark.parametrize("name", sorted(n for n in NEEDS if n != "fuse"))
def test_missing_part_is_a_clear_error(name):
    with pytest.raises(ValueError, match="needs SegOutput part"):
        create_loss(name, MODS, 3)(SegOutput(logits=torch.randn(3, 3, 4, 4, 4)), _batch())


def test_prism_total_is_the_weighted_sum_of_its_parts():
    out, batch = _output(), _batch()
    beta, delta = [0.5, 0.2, 0.3, 0.4], 0.1
    res = create_loss("prism", MODS, 3, beta=beta, delta=delta, gss=True, gss_weight=0.5)(out, batch)
    p = res.parts
    expected = p["fuse"] + p["uni"] + p["prm"] + 0.5 * p["gss"]
    for i, m in enumerate(MODS):
        expected = expected + beta[i] * p[f"pixel_kl/{m}"] + delta * p[f"proto_l2/{m}"]
    torch.testing.assert_close(res.total.detach(), expected)
    for term in ("uni", "pixel_kl", "proto_l2", "gss"):
        assert p[f"{term}/t1ce"] != 0  # sample 1 and 2 have t1ce
    # the parts equal the single terms
    for name in ("fuse", "uni", "prm", "pixel_kl", "proto_l2"):
        torch.testing.assert_close(create_loss(name, MODS, 3)(out, batch).parts[name], p[name])
    with pytest.raises(ValueError, match="beta"):
        create_loss("prism", MODS, 3, beta=[0.5, 0.5])


def test_prism_gradients_reach_only_students_and_available_modalities():
    out, batch = _output(), _batch()
    create_loss("prism", MODS, 3, gss=True, preference=True)(out, batch).total.backward()
    assert out.features.grad is None  # the fused features only teach (proto_l2)
    assert out.logits.grad is not None and out.deep[0].grad is not None  # fuse and PRM learn
    for t in (out.uni, out.uni_deep[0], out.uni_features):
        assert (t.grad[~batch.mask] == 0).all() and t.grad[batch.mask].abs().sum() > 0


def test_preference_gates_proto_and_round_trips_state():
    out, batch = _output(), _batch()
    term = create_loss("prism", MODS, 3, preference=True, missing_rates=[0.5, 0.0, 0.0, 0.0])
    res = term(out, batch)
    # E starts at Proj(1 / (1 - FR)) = 2 [2, 1, 1, 1] / ||[2, 1, 1, 1]||_2: the first update moves it, never rescales
    assert res.parts["pref_coef/flair"].item() == pytest.approx(4.0 / 7.0**0.5)
    assert res.parts["pref_coef/t1ce"].item() == pytest.approx(2.0 / 7.0**0.5)
    plain = create_loss("prism", MODS, 3)(out, batch)
    assert res.parts["proto_l2"] < plain.parts["proto_l2"]  # omega = 1[RP < 0] drops some pairs
    term.on_epoch_end()
    buf = io.BytesIO()
    torch.save(term.state_dict(), buf)
    buf.seek(0)
    fresh = create_loss("prism", MODS, 3, preference=True)
    fresh.load_state_dict(torch.load(buf, weights_only=True))
    assert fresh.state_dict() == term.state_dict()
    assert fresh.state_dict()["preference"]["epoch"] == 1


def test_proto_l2_term_with_preference_scales_by_coefficients():
    out, batch = _output(), _batch()
    gated = create_loss("proto_l2", MODS, 3, preference=True, missing_rates=[0.0, 0.0, 0.0, 0.75])(out, batch)
    parts = gated.parts
    expected = sum(parts[f"proto_l2/{m}"] * parts[f"pref_coef/{m}"] for m in MODS)
    torch.testing.assert_close(gated.total.detach(), expected)


def test_every_term_on_multi_unet_output():
    torch.manual_seed(0)
    model = create_backbone("multi_unet", MODS, 4, width=4, depth=3).train()
    terms = {name: create_loss(name, MODS, 4, **OPTIONS.get(name, {})) for name in sorted(NEEDS)}
    model.request_parts(frozenset().union(*(t.needs for t in terms.values())))
    batch = _batch(b=2, size=16, k=4)
    out = model(batch.image, batch.mask)
    params = [p for p in model.parameters() if p.requires_grad]
    for name, term in terms.items():
        res = term(out, batch)
        assert res.total.dim() == 0 and torch.isfinite(res.total), name
        assert all(torch.isfinite(v).all() for v in res.parts.values()), name
        grads = torch.autograd.grad(res.total, params, retain_graph=True, allow_unused=True)
        used = [g for g in grads if g is not None]
        assert used and all(torch.isfinite(g).all() for g in used), name
        assert sum(g.abs().sum() for g in used) > 0, name
