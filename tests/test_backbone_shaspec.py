"""ShaSpec specifics: the missing-modality substitution rule, the auxiliary losses' values, training with them."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import fast_config
from prism.batch import Batch
from prism.engine.trainer import Trainer
from prism.errors import PluginError
from prism.modalities import BRATS_MODALITIES
from prism.outputs import SegOutput
from prism.plugins.backbones.shaspec import ShaSpecOutput
from prism.registry import create_backbone, create_loss

MODS3 = ("a", "b", "c")


def tiny() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_backbone("shaspec", BRATS_MODALITIES, 3, width=4, depth=3)


def batch_for(mask: torch.Tensor, size: int = 1) -> Batch:
    b, m = mask.shape
    return Batch(image=torch.zeros(b, m, size, size, size), label=torch.zeros(b, size, size, size, dtype=torch.long),
                 mask=mask, availability=mask)


def test_missing_modality_fused_features_are_the_mean_of_available_shared_features():
    model = tiny().train()
    x = torch.randn(3, 4, 8, 8, 8)
    mask = torch.tensor([[True, False, True, False], [False, False, False, True], [True, True, True, True]])
    with torch.no_grad():
        out = model(x, mask)
        # available modalities: shared + proj([shared, specific]), recomputed from the parts by hand
        specific = model.specific_encoder(x * mask[:, :, None, None, None])[-1]
        composed = out.shared + model.compose.proj(torch.cat([out.shared, specific], 2).flatten(0, 1)).unflatten(
            0, (3, 4))
    assert out.fused.shape == out.shared.shape == (3, 4, 16, 2, 2, 2)
    mean0 = (out.shared[0, 0] + out.shared[0, 2]) / 2
    for m in (1, 3):
        torch.testing.assert_close(out.fused[0, m], mean0, rtol=0, atol=1e-6)
    for m in (0, 1, 2):  # a single available modality: its own shared features stand in
        torch.testing.assert_close(out.fused[1, m], out.shared[1, 3], rtol=0, atol=0)
    for b, m in [(0, 0), (0, 2), (1, 3), (2, 0), (2, 1), (2, 2), (2, 3)]:
        torch.testing.assert_close(out.fused[b, m], composed[b, m], rtol=1e-5, atol=1e-6)
        assert not torch.allclose(out.fused[b, m], out.shared[b, m])  # the specific part contributes


def test_domain_logits_classify_each_modality_over_the_constructor_modalities():
    torch.manual_seed(0)
    model = create_backbone("shaspec", MODS3, 2, width=2, depth=2).train()
    out = model(torch.randn(2, 3, 4, 4, 4), torch.tensor([[True, False, True], [True, True, True]]))
    assert isinstance(out, ShaSpecOutput)
    assert out.domain_logits.shape == (2, 3, 3)
    assert model.extra_loss_terms == ("shaspec_domain", "shaspec_consistency")


def test_domain_loss_known_value():
    # M = 3, two samples; entry [b, m] must predict class m
    logits = torch.tensor([[[2.0, 0.0, 0.0], [1.0, 1.0, 1.0], [0.0, 3.0, 0.0]],
                           [[0.0, 0.0, 0.0], [0.0, 2.0, 0.0], [5.0, 5.0, 5.0]]])
    mask = torch.tensor([[True, False, True], [True, True, False]])

    def ce(row, target):
        return math.log(sum(math.exp(v) for v in row)) - row[target]

    rows = logits.tolist()
    counted = [ce(rows[0][0], 0), ce(rows[0][2], 2), ce(rows[1][0], 0), ce(rows[1][1], 1)]
    out = ShaSpecOutput(logits=torch.zeros(2, 2, 1, 1, 1), domain_logits=logits)
    result = create_loss("shaspec_domain", MODS3, 2, weight=0.5)(out, batch_for(mask))
    assert result.total.item() == pytest.approx(0.5 * sum(counted) / 4, rel=1e-6)
    assert result.parts["shaspec_domain"].item() == pytest.approx(sum(counted) / 4, rel=1e-6)
    assert result.parts["shaspec_domain/a"].item() == pytest.approx((counted[0] + counted[2]) / 2, rel=1e-6)
    assert result.parts["shaspec_domain/b"].item() == pytest.approx(counted[3], rel=1e-6)
    assert result.parts["shaspec_domain/c"].item() == pytest.approx(counted[1], rel=1e-6)


def test_consistency_loss_known_value():
    shared = torch.zeros(2, 3, 2, 1, 1, 1)  # [B, M, C, d, h, w]
    shared[0, 1, :, 0, 0, 0] = torch.tensor([1.0, 3.0])
    shared[0, 2, :, 0, 0, 0] = torch.tensor([2.0, 2.0])
    shared[1, 0, :, 0, 0, 0] = torch.tensor([9.0, 9.0])
    out = ShaSpecOutput(logits=torch.zeros(2, 2, 1, 1, 1), shared=shared)
    # sample 0: all three available: pairs (0,1) |1|,|3| -> 2; (0,2) -> 2; (1,2) |1|,|1| -> 1
    # sample 1: only one modality available -> no pair (its 9s must not count)
    mask = torch.tensor([[True, True, True], [True, False, False]])
    l1 = create_loss("shaspec_consistency", MODS3, 2)(out, batch_for(mask))
    assert l1.total.item() == pytest.approx((2 + 2 + 1) / 3)
    l2 = create_loss("shaspec_consistency", MODS3, 2, distance="l2", weight=2.0)(out, batch_for(mask))
    assert l2.total.item() == pytest.approx(2.0 * ((1 + 9) / 2 + 4 + 1) / 3)
    mask = torch.tensor([[True, False, True], [True, True, False]])  # pairs (0,2) in sample 0, (0,1) in sample 1
    assert create_loss("shaspec_consistency", MODS3, 2)(out, batch_for(mask)).total.item() == pytest.approx(
        (2 + 9) / 2)
    single = torch.tensor([[False, True, False], [True, False, False]])  # no pair anywhere: 0
    assert create_loss("shaspec_consistency", MODS3, 2)(out, batch_for(single)).total.item() == 0.0


@pytest.mark.parametrize(("term", "field"), [("shaspec_domain", "domain_logits"), ("shaspec_consistency", "shared")])
def test_terms_say_which_field_is_missing(term, field):
    mask = torch.ones(1, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match=rf"'{term}' needs the '{field}' field of backbone 'shaspec'") as info:
        create_loss(term, MODS3, 2)(SegOutput(logits=torch.zeros(1, 2, 1, 1, 1)), batch_for(mask))
    assert isinstance(info.value, PluginError) and "\n" not in str(info.value)


@pytest.mark.slow
def test_both_losses_train_end_to_end_for_one_step(tiny_cache, tmp_path):
    losses = ("losses=[{name: fuse}, {name: shaspec_domain, weight: 0.02}, "
              "{name: shaspec_consistency, weight: 0.1}]")
    three = ("masking.train.name=fixed", "masking.train.options={combination: 12}")  # FLAIR+T1ce+T2: T1 missing
    cfg = fast_config("model.name=shaspec", "train.steps=1", "train.log_every=1", losses, *three, cache=tiny_cache)
    trainer = Trainer(cfg, tmp_path / "run", cache_path=tiny_cache)
    model = trainer.ctx.model
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    history = trainer.fit()
    row = history[-1]
    assert row["step"] == 1
    for key in ("shaspec_domain", "shaspec_consistency"):
        assert math.isfinite(row[key]) and row[key] > 0, (key, row)
    after = model.state_dict()
    for key in ("domain_classifier.weight", "specific_encoder.first.0.0.weight", "shared_encoder.first.0.0.weight",
                "compose.proj.weight"):
        assert not torch.equal(before[key], after[key]), f"{key} did not learn"
