"""The loss set a run builds: each piece's share of the loss, term tensors placed before the first step,
``missing_rates: from_split``, the short-run warning and the preference coefficients' first epoch."""

from __future__ import annotations

import logging
import math

import pytest
import torch
from test_losses_batched import MODS, K, SyncCounter, make

from prism.config import build_config
from prism.engine.builder import build_parts
from prism.engine.losses import LossSet, WeightedTerm
from prism.errors import ConfigError
from prism.plugins.losses import PreferenceRegulariser
from prism.registry import create_loss


def test_shares_are_each_weighted_piece_over_the_loss_without_host_reads():
    out, batch = make(seed=3)
    prism = create_loss("prism", MODS, K, preference=True, separate=True, gss=True)
    fuse = create_loss("fuse", MODS, K)
    terms = LossSet([WeightedTerm("prism", 1.0, prism), WeightedTerm("fuse", 2.0, fuse)])
    terms.checked = True  # the seam checks of a first evaluation read once; every later one reads nothing
    with SyncCounter() as counter:
        total, parts = terms(out, batch)
    assert counter.found == []
    shares = {k: v for k, v in parts.items() if k.startswith("share.")}
    # the prism term's own pieces, then the second term as one piece (its name taken: prefixed)
    assert set(shares) == {"share.fuse", "share.prm", "share.uni", "share.rfnet_sep", "share.pixel_kl",
                           "share.proto_l2", "share.gss", "share.fuse.fuse"}
    assert all(not v.requires_grad and v.dim() == 0 for v in shares.values())
    assert float(sum(shares.values())) == pytest.approx(1.0, rel=1e-5)
    # each piece recomputed here from the unweighted parts and the term's weights
    coef = prism.preference.coefficients
    kl = torch.stack([parts[f"pixel_kl/{m}"] for m in MODS])
    proto = torch.stack([parts[f"proto_l2/{m}"] for m in MODS])
    expected = {"share.fuse": parts["fuse"], "share.prm": parts["prm"], "share.uni": parts["uni"],
                "share.rfnet_sep": parts["rfnet_sep"], "share.pixel_kl": (0.5 * kl * coef).sum(),
                "share.proto_l2": (0.1 * proto * coef).sum(), "share.gss": 0.5 * parts["gss"],
                "share.fuse.fuse": 2.0 * fuse(out, batch).total.detach()}
    for key, piece in expected.items():
        assert float(shares[key]) == pytest.approx(float(piece / total.detach()), rel=1e-5), key


def test_a_term_without_pieces_is_one_piece():
    out, batch = make(seed=4)
    terms = LossSet([WeightedTerm("fuse", 1.0, create_loss("fuse", MODS, K)),
                     WeightedTerm("prm", 3.0, create_loss("prm", MODS, K))])
    _, parts = terms(out, batch)
    assert float(parts["share.prm"]) == pytest.approx(3 * float(parts["prm"]) / float(parts["loss"]), rel=1e-6)
    assert float(parts["share.fuse"] + parts["share.prm"]) == pytest.approx(1.0, rel=1e-6)


def test_to_places_the_term_tensors_once():
    term = create_loss("prism", MODS, K, preference=True, beta=[0.1, 0.2, 0.3, 0.4])
    terms = LossSet([WeightedTerm("prism", 1.0, term)])
    assert terms.to("meta") is terms
    assert term._weights.device.type == "meta" and term.preference.coefficients.device.type == "meta"
    assert term.preference._rp_sum.device.type == "meta"
    on_cpu = create_loss("prism", MODS, K, beta=[0.1, 0.2, 0.3, 0.4])
    before = on_cpu._weights
    assert on_cpu.to("cpu")._weights is before  # already there: nothing copied
    torch.testing.assert_close(before[0], torch.tensor([0.1, 0.2, 0.3, 0.4]))


def test_from_split_is_resolved_from_the_training_availability_when_built(caplog):
    config = build_config(None, ["model.name=multi_unet",
                                 "losses=[{name: prism, options: {missing_rates: from_split, preference: true}}]"])
    split = [(True, True, False, True), (True, False, False, True), (True, True, True, False),
             (False, True, True, True)]
    with caplog.at_level(logging.INFO, logger="prism.engine.builder"):
        parts = build_parts(config, MODS, K, availability=split)
    term = parts.losses.terms[0].term
    assert term.missing_rates == pytest.approx([0.25, 0.25, 0.5, 0.25])  # 1 - available / cases
    assert "losses.0.options.missing_rates from the training split (4 cases)" in caplog.text
    with pytest.raises(ConfigError, match=r"^losses.0.options.missing_rates: from_split needs the training split"):
        build_parts(config, MODS, K)


@pytest.mark.parametrize(("steps", "warned"), [(100, True), (250, False)])
def test_a_run_shorter_than_an_epoch_says_so_once(caplog, steps, warned):
    config = build_config(None, ["model.name=multi_unet", f"train.steps={steps}", "train.epoch_length=250",
                                 "losses=[{name: prism, options: {preference: true}}]"])
    with caplog.at_level(logging.WARNING, logger="prism.engine.builder"):
        build_parts(config, MODS, K)
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    if warned:
        assert len(lines) == 1 and "\n" not in lines[0]
        assert lines[0].startswith("train.steps=100 is shorter than one epoch (train.epoch_length=250): loss "
                                   "'prism' never reaches an epoch end")
    else:
        assert lines == []


def test_no_warning_without_an_epoch_schedule(caplog):
    config = build_config(None, ["model.name=multi_unet", "train.steps=10", "losses=[{name: prism}]"])
    with caplog.at_level(logging.WARNING, logger="prism.engine.builder"):
        build_parts(config, MODS, K)
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]


def test_coefficients_start_projected_so_the_first_epoch_moves_them_by_gamma_rp():
    rates = [0.6, 0.4, 0.2, 0.8]  # mr2468 in MODS order
    reg = PreferenceRegulariser(4, missing_rates=rates)
    raw = [min(max(1 / (1 - r), 0.1), 4.0) for r in rates]  # clamp, then 2 E / ||E||
    start = [2 * e / math.sqrt(sum(x * x for x in raw)) for e in raw]
    assert reg.coefficients.tolist() == pytest.approx(start, rel=1e-6)
    rp = torch.tensor([[0.3, -0.1, 0.2, -0.4]])
    reg.observe(rp, torch.ones(1, 4, dtype=torch.bool))
    reg.on_epoch_end()
    moved = [min(max(e - 0.01 * r, 0.1), 4.0) for e, r in zip(start, rp[0].tolist(), strict=True)]
    expected = [2 * e / math.sqrt(sum(x * x for x in moved)) for e in moved]
    assert reg.coefficients.tolist() == pytest.approx(expected, rel=1e-6)
    change = max(abs(a / b - 1) for a, b in zip(reg.coefficients.tolist(), start, strict=True))
    assert change < 0.02  # no jump: the unprojected start had norm 5.97, every later E norm 2
    assert math.sqrt(sum((1 / (1 - r)) ** 2 for r in rates)) == pytest.approx(5.97, abs=0.01)
