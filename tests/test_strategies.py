"""Meta-strategies: their updates checked against the formulas, computed independently on the same batches."""

from __future__ import annotations

import pytest
import torch

from conftest import fast_config
from prism.engine.trainer import Trainer
from prism.registry import create_masking_policy
from prism.testing import STRATEGY_CHECKS, check_strategy

SGD = ["optim.name=sgd", "optim.momentum=0", "optim.weight_decay=0", "optim.grad_clip=null", "optim.lr=0.05"]


def flat(params):
    return torch.cat([p.detach().reshape(-1) for p in params])


def grads_at(ctx, batch):
    ctx.optimizer.zero_grad(set_to_none=True)
    loss, _ = ctx.compute_loss(batch)
    loss.backward()
    return flat([p.grad if p.grad is not None else torch.zeros_like(p) for p in ctx.parameters()])


def set_params(ctx, vector):
    with torch.no_grad():
        torch.nn.utils.vector_to_parameters(vector, ctx.parameters())


@pytest.mark.slow
@pytest.mark.parametrize("alpha", [1.0, 0.5])
def test_meta_drop_update_matches_the_seeds_formula(tiny_cache, tmp_path, alpha):
    cfg = fast_config("strategy.name=meta_drop", f"strategy.options={{alpha: {alpha}, meta_lr: 0.2}}",
                      "train.steps=1", *SGD, cache=tiny_cache)
    run = Trainer(cfg, tmp_path / "a", cache_path=tiny_cache)
    run.fit()

    ref = Trainer(cfg, tmp_path / "b", cache_path=tiny_cache)
    ctx = ref.ctx
    phi0 = flat(ctx.parameters())
    g_train = grads_at(ctx, ctx.next_batch("train"))
    phi_tilde = phi0 - 0.05 * g_train
    set_params(ctx, phi_tilde)
    g_meta = grads_at(ctx, ctx.next_batch("meta", policy="meta"))
    expected = phi0 + alpha * (phi_tilde - phi0) - 0.2 * g_meta
    torch.testing.assert_close(flat(run.ctx.parameters()), expected, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(expected, phi_tilde)  # the meta step did something


def test_meta_drop_meta_batch_uses_its_own_policy(tiny_cache, tmp_path):
    cfg = fast_config("strategy.name=meta_drop", "masking.train={name: fixed, options: {combination: t2}}",
                      cache=tiny_cache)
    ctx = Trainer(cfg, tmp_path, cache_path=tiny_cache).ctx
    assert ctx.next_batch("train").mask[:, :3].sum() == 0
    assert ctx.next_batch("meta", policy="meta").mask.all()  # default meta policy: full


@pytest.mark.slow
def test_reptile_interpolates_towards_adapted_weights(tiny_cache, tmp_path):
    opts = "{inner_steps: 2, inner_lr: 0.05, inner_optimizer: sgd, meta_step: 0.5, meta_step_final: 0.5}"
    cfg = fast_config("strategy.name=reptile", f"strategy.options={opts}", "train.steps=1", *SGD,
                      cache=tiny_cache)
    run = Trainer(cfg, tmp_path / "a", cache_path=tiny_cache)
    run.fit()

    ref = Trainer(cfg, tmp_path / "b", cache_path=tiny_cache)
    ctx, strategy = ref.ctx, ref.strategy
    theta = flat(ctx.parameters())
    task = strategy.sampler.sample(strategy.generator)
    w = theta.clone()
    for _ in range(2):
        w = w - 0.05 * grads_at(ctx, strategy.sampler.batch(ctx, task, task.support_stream))
        set_params(ctx, w)
    expected = theta + 0.5 * (w - theta)
    torch.testing.assert_close(flat(run.ctx.parameters()), expected, rtol=1e-5, atol=1e-6)


def test_reptile_meta_step_anneals_linearly():
    from prism.plugins.strategies.reptile import Reptile

    r = Reptile(meta_step=1.0, meta_step_final=0.2)
    assert [r.epsilon(s, 4) for s in range(5)] == pytest.approx([1.0, 0.8, 0.6, 0.4, 0.2])


def test_maml_tasks_use_disjoint_support_and_query_cases(tiny_cache, tmp_path):
    cfg = fast_config("strategy.name=maml", cache=tiny_cache)
    trainer = Trainer(cfg, tmp_path, cache_path=tiny_cache)
    streams = trainer.ctx.streams
    assert set(streams.subsets["support"]).isdisjoint(streams.subsets["query"])
    assert set(streams.subsets["support"]) | set(streams.subsets["query"]) == set(streams.case_ids)
    strategy, ctx = trainer.strategy, trainer.ctx
    task = strategy.sampler.sample(strategy.generator)
    batch = strategy.sampler.batch(ctx, task, "support")
    assert (batch.mask == task.mask).all() and (batch.image[:, ~task.mask] == 0).all()


def test_site_tasks_need_two_sites(tiny_cache, tmp_path):
    from prism.errors import ConfigError

    cfg = fast_config("strategy.name=maml", "strategy.options={tasks: site}", cache=tiny_cache)
    with pytest.raises(ConfigError, match="'site' needs at least two sites"):
        Trainer(cfg, tmp_path, cache_path=tiny_cache)


#: every registered strategy, with options exercising its state (learned rates, second order, class tasks)
CONFORMANCE_CASES = [
    ("standard", {}),
    ("meta_drop", {}),
    ("maml", {"inner_steps": 2, "first_order": False}),
    ("maml", {"learn_inner_lr": True}),
    ("reptile", {"inner_steps": 2}),
    ("meta_transfer", {"inner_steps": 1, "first_order": False}),
    ("fast_weights", {"tasks_per_step": 1}),
    ("maml", {"tasks": "class", "held_out_classes": [3]}),
]


def test_conformance_cases_cover_every_registered_strategy():
    from prism.registry import list_plugins

    assert set(list_plugins("strategy")) <= {name for name, _ in CONFORMANCE_CASES}


@pytest.mark.slow
@pytest.mark.parametrize("strategy, options", CONFORMANCE_CASES)
def test_strategy_passes_the_conformance_suite(tiny_cache, strategy, options):
    """Steps through the contract, progress, adapt, determinism, state round trip and exact resume
    (``prism.testing.check_strategy``)."""
    report = check_strategy(strategy, options=options, cache=tiny_cache)
    assert set(report.passed) | set(report.skipped) == set(STRATEGY_CHECKS)
    assert set(report.skipped) <= {"device_move"}  # only without CUDA


@pytest.mark.slow
def test_meta_sgd_rates_are_learned_and_resumed(tiny_cache, tmp_path):
    cfg = fast_config("strategy.name=maml", "strategy.options={learn_inner_lr: true}", "train.steps=4",
                      "train.checkpoint_every=2", cache=tiny_cache)
    straight = Trainer(cfg, tmp_path / "a", cache_path=tiny_cache)
    straight.fit()
    Trainer(cfg, tmp_path / "b", cache_path=tiny_cache).fit(stop_at=2)
    resumed = Trainer(cfg, tmp_path / "b", cache_path=tiny_cache, resume=True)
    resumed.fit()
    lrs_a = list(straight.strategy.inner.extra_parameters())
    lrs_b = list(resumed.strategy.inner.extra_parameters())
    assert lrs_a and not torch.equal(lrs_a[0], torch.full_like(lrs_a[0], 0.01))  # learned
    for x, y in zip(lrs_a, lrs_b, strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=0)


def test_masking_policies_registered_and_fixed_names():
    from prism.errors import ConfigError
    from prism.modalities import BRATS_MODALITIES

    policy = create_masking_policy("fixed", BRATS_MODALITIES, combination="FLAIR+T1ce")
    availability = torch.tensor([[True, True, True, True], [True, False, True, True]])
    assert policy(availability, torch.Generator()).tolist() == [[True, True, False, False],
                                                                 [True, False, False, False]]
    assert create_masking_policy("fixed", BRATS_MODALITIES, combination=14).combination.name == "FLAIR+T1ce+T1+T2"
    with pytest.raises(ConfigError, match="unknown modality"):
        create_masking_policy("fixed", BRATS_MODALITIES, combination="flair+pd")
    utd = create_masking_policy("utd", BRATS_MODALITIES)
    assert torch.equal(utd(availability, torch.Generator()), availability)
    drop = create_masking_policy("utd_drop", BRATS_MODALITIES, per_batch=True)
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        m = drop(availability, g)
        assert torch.equal(m[0], m[1]) and not (m & ~availability).any() and m.any(1).all()


def test_meta_drop_records_preference_statistics_from_the_training_batch_only(tiny_cache, tmp_path):
    cfg = fast_config("strategy.name=meta_drop", "losses=[{name: prism, options: {preference: true}}]",
                      cache=tiny_cache)
    trainer = Trainer(cfg, tmp_path, cache_path=tiny_cache)
    term = trainer.ctx.losses.terms[0].term
    seen = []
    original = term.preference.observe
    term.preference.observe = lambda rp, mask, *rest, **kw: (seen.append((mask.clone(), float(kw["weight"]))),
                                                             original(rp, mask, *rest, **kw))
    trainer.strategy.step(trainer.ctx)
    assert [w for _, w in seen] == [1.0, 0.0]  # the meta batch (full masks) is recorded with weight 0
    assert term.preference.state_dict()["rp_count"] == seen[0][0].sum(0).float().tolist()


def test_missing_rates_are_given_by_modality_name():
    from prism.modalities import BRATS_MODALITIES
    from prism.plugins.losses.terms import rates_by_modality

    assert rates_by_modality({"t2": 0.8, "flair": 0.6}, BRATS_MODALITIES) == [0.6, 0.0, 0.0, 0.8]
    assert rates_by_modality([0.1, 0.2, 0.3, 0.4], BRATS_MODALITIES) == [0.1, 0.2, 0.3, 0.4]
    with pytest.raises(ValueError, match=r"unknown modalities \['pd'\]"):
        rates_by_modality({"pd": 0.5}, BRATS_MODALITIES)
