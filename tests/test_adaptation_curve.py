"""Held-out sites (splits written atomically), adaptation curves (prism-eval adapt) and the fast adaptation of
an evaluation: one adaptation loop under every rule, checked against torch optimizers on a copy written here."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from conftest import FAST
from prism.adapt import adaptation_loss
from prism.cli.data import main as data_main
from prism.cli.evaluate import main as eval_main
from prism.config import build_config
from prism.data.cache_reader import CacheReader
from prism.data.splits import hold_out_site_splits
from prism.data_tools.synthetic import SynthSettings, write_synthetic_cache
from prism.engine.trainer import Trainer
from prism.errors import DataError
from prism.evaluation.adaptation import AdaptationSettings, fine_tune_rule, load_support, support_batches
from prism.evaluation.adaptation_curve import adaptation_curve, draw_support
from prism.evaluation.results import mean_over_combinations
from prism.evaluation.scoring import EvalOptions, evaluate_cases


@pytest.fixture(scope="module")
def site_run(tmp_path_factory):
    """A 3-site cache with site2 held out, and a run trained for 2 steps on it."""
    root = tmp_path_factory.mktemp("sites")
    cache = root / "sites.h5"
    write_synthetic_cache(str(cache), SynthSettings(cases=9, shape=(16, 16, 16), seed=2, sites=3),
                          test_fraction=0.34, hold_out_sites=["site2"])
    config = build_config(None, [*FAST, f"data.cache={cache}", "train.steps=2", "eval.hd95=false",
                                 "train.loggers=[csv]"])
    trainer = Trainer(config, root / "run", cache_path=cache)
    trainer.fit()
    trainer.evaluate()
    trainer.close()
    return cache, root / "run"


def test_hold_out_site_splits_keep_every_case_of_the_site_out():
    sites = {f"c{i}": f"site{i % 3}" for i in range(12)}
    splits = hold_out_site_splits(sites, ["site1"], seed=0, test_fraction=0.25)
    assert splits["heldout"] == sorted(c for c, s in sites.items() if s == "site1")
    rest = splits["train"] + splits["test"]
    assert sorted(rest) == sorted(c for c, s in sites.items() if s != "site1") and len(splits["test"]) == 2
    with pytest.raises(DataError, match=r"unknown site\(s\) \['site7'\]"):
        hold_out_site_splits(sites, ["site7"])


def test_synth_with_a_held_out_site_and_drawn_missing_rates(tmp_path):
    cache = tmp_path / "c.h5"
    write_synthetic_cache(str(cache), SynthSettings(cases=12, shape=(8, 8, 8), seed=1, sites=4),
                          hold_out_sites=["site3"], missing_rates="flair=0.9")
    reader = CacheReader(cache)
    assert {reader.info(c).site for c in reader.split("heldout")} == {"site3"}
    assert "site3" not in {reader.info(c).site for c in reader.split("train") + reader.split("test")}
    train_flair = [reader.info(c).availability[0] for c in reader.split("train")]
    assert not all(train_flair)  # FLAIR dropped for some training cases (rate 0.9) ...
    assert all(all(reader.info(c).availability) for c in reader.split("test") + reader.split("heldout"))  # not here


def test_prism_data_split_writes_splits_atomically_and_refuses_unknown_sites(tmp_path, capsys):
    cache = tmp_path / "c.h5"
    write_synthetic_cache(str(cache), SynthSettings(cases=8, shape=(8, 8, 8), seed=0, sites=2))
    assert data_main(["split", str(cache), "--hold-out-site", "site1", "--test-fraction", "0.25"]) == 0
    reader = CacheReader(cache)
    assert {reader.info(c).site for c in reader.split("heldout")} == {"site1"} and len(reader.split("test")) == 1
    reader.close()
    before = cache.read_bytes()
    assert data_main(["split", str(cache), "--hold-out-site", "site5"]) == 2
    assert "unknown site(s) ['site5']" in capsys.readouterr().err
    assert cache.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["c.h5"]  # no temporaries left


def test_adapt_refuses_a_site_of_the_training_split(site_run, capsys):
    _, run = site_run
    assert eval_main(["adapt", str(run), "--site", "site0", "--steps", "0,1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "site 'site0' is in the training split 'train'" in err and "\n" not in err


def test_adapt_cli_writes_its_own_files_and_leaves_eval_json_alone(site_run):
    _, run = site_run
    eval_before = (run / "eval.json").read_bytes()
    assert eval_main(["adapt", str(run), "--site", "site2", "--steps", "0,2", "--support", "1", "--draws", "2",
                      "--patch", "16", "16", "16"]) == 0
    assert (run / "eval.json").read_bytes() == eval_before
    data = json.loads((run / "adapt.json").read_text())
    per_draw = np.array([d["dice"] for d in data["per_draw"]])  # [draws, K, regions]
    assert data["steps"] == [0, 2] and per_draw.shape == (2, 2, 3)
    assert np.allclose(data["dice_mean"], per_draw.mean(0), atol=1e-5)
    assert np.allclose(data["dice_sd"], per_draw.std(0, ddof=1), atol=1e-5)
    assert all(len(d["support"]) == 1 and d["support"][0] not in d["query"] for d in data["per_draw"])
    assert (run / "adapt.md").read_text().startswith("# Adaptation to site 'site2'")
    assert (run / "adapt.png").stat().st_size > 0
    from prism.evaluation.provenance import report_matches_checkpoint

    assert report_matches_checkpoint(run, "adapt.json") and data["checkpoint"]["file"] == "last.pt"
    assert data["settings"]["averaging"].startswith("mean over the modality combinations")


def test_curve_calls_the_rule_once_per_draw_and_k_and_k0_is_the_unadapted_model(site_run):
    from prism.runs import load_run

    cache, run_dir = site_run
    run = load_run(run_dir)
    reader = CacheReader(cache)
    members = list(reader.split("heldout"))
    calls = []

    def rule(model, support, settings, **kwargs):
        calls.append((len(support), settings.steps, settings.seed))
        return fine_tune_rule(model, support, settings, **kwargs)

    base = AdaptationSettings(site="site2", steps=0, lr=0.05, patch_size=(16, 16, 16), seed=4)
    weights = {k: v.clone() for k, v in run.model.state_dict().items()}
    options = EvalOptions(compute_hd95=False)
    curve = adaptation_curve(run.model, reader, members, site="site2", steps=[3, 0, 1], support=1, draws=2,
                             base=base, device=torch.device("cpu"), options=options, rule=rule)
    assert curve.steps == [0, 1, 3] and sorted(calls) == [(1, 1, 4), (1, 1, 5), (1, 3, 4), (1, 3, 5)]
    assert all(torch.equal(v, run.model.state_dict()[k]) for k, v in weights.items())  # the model is untouched
    pairs = draw_support(members, 1, 2, seed=4)
    for r, (_, query) in enumerate(pairs):
        plain = evaluate_cases(run.model, reader, query, device=torch.device("cpu"), options=options)
        assert np.allclose(curve.dice[r, 0], mean_over_combinations(plain.mean_dice()), equal_nan=True)
    reader.close()


def _optimizer_on_a_copy(model, batches, make_optimizer):
    """The reference: a deep copy trained in place by a torch optimizer (ordinary forward and backward)."""
    adapted = copy.deepcopy(model).train()
    optimizer = make_optimizer([p for p in adapted.parameters() if p.requires_grad])
    for batch in batches:
        optimizer.zero_grad(set_to_none=True)
        adaptation_loss(adapted(batch.image, batch.mask), batch).backward()
        optimizer.step()
    return dict(adapted.named_parameters())


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_fine_tuning_and_the_standard_strategys_rule_equal_a_torch_optimizer_on_a_copy(site_run, optimizer):
    from prism.evaluation.adaptation import strategy_rule
    from prism.runs import load_run

    cache, run_dir = site_run
    run = load_run(run_dir)
    reader = CacheReader(cache)
    support = load_support(reader, list(reader.split("heldout"))[:2])
    reader.close()
    settings = AdaptationSettings(site="site2", steps=2, lr=0.05, optimizer=optimizer, patch_size=(16, 16, 16),
                                  seed=3)
    before = {k: v.clone() for k, v in run.model.state_dict().items()}
    batches = support_batches(run.model, support, settings, torch.device("cpu"))
    make = {"sgd": lambda p: torch.optim.SGD(p, lr=0.05), "adam": lambda p: torch.optim.Adam(p, lr=0.05)}[optimizer]
    expected = _optimizer_on_a_copy(run.model, batches, make)
    rules = {"fine_tune": fine_tune_rule}
    if optimizer == "sgd":  # standard training adapts by plain SGD fine-tuning (settings.optimizer is not its)
        rules["strategy"] = strategy_rule(run.strategy)
    for name, rule in rules.items():
        got = dict(rule(run.model, support, settings, device=torch.device("cpu")).named_parameters())
        assert all(torch.equal(v, run.model.state_dict()[k]) for k, v in before.items())  # the run's model untouched
        assert any(not torch.allclose(got[n], before[n]) for n in got), name  # it did adapt
        for n, value in got.items():
            torch.testing.assert_close(value, expected[n], rtol=1e-4, atol=1e-6, msg=f"{name} {n}")


def test_support_batches_draw_crops_and_registered_random_masks_from_the_seed(site_run):
    from prism.registry import create_masking_policy
    from prism.runs import load_run

    cache, run_dir = site_run
    run = load_run(run_dir)
    reader = CacheReader(cache)
    support = load_support(reader, list(reader.split("heldout"))[:2])
    reader.close()
    settings = AdaptationSettings(site="site2", steps=4, patch_size=(8, 8, 8), seed=11)
    batches = support_batches(run.model, support, settings, torch.device("cpu"))
    again = support_batches(run.model, support, settings, torch.device("cpu"))
    assert len(batches) == 4
    available = torch.stack([a for _, _, a in support])
    gen, policy = torch.Generator().manual_seed(11), create_masking_policy("random", run.modalities)
    for i, batch in enumerate(batches):
        assert batch.image.shape == (2, len(run.modalities), 8, 8, 8) and batch.label.shape == (2, 8, 8, 8)
        for _, label, _ in support:  # the crops come first in each step's draws (3 per case), then the masks
            [int(torch.randint(0, n - 8 + 1, (), generator=gen)) for n in label.shape]
        assert torch.equal(batch.mask, policy(available, gen)), i  # the registered random policy, in order
        assert (batch.mask.any(1) & ~(batch.mask & ~available).any(1)).all()  # non-empty, within availability
        assert torch.equal(batch.image, again[i].image) and torch.equal(batch.image, batches[i].image)  # re-readable
        label_crop = [lab for _, lab, _ in support]
        assert any(torch.equal(batch.label[0], label_crop[0][a:a + 8, b:b + 8, c:c + 8])
                   for a in range(9) for b in range(9) for c in range(9))  # a crop of the first case's labels


def test_prism_eval_adapt_site_uses_the_runs_adaptation_steps_and_rate(site_run, tmp_path):
    """--adapt-site on a run whose eval.adapt_site is unset: the run's eval.adapt_steps and adapt_lr apply (the
    flags override them); the report records what was used."""
    import shutil

    import yaml

    _, run_dir = site_run
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["eval"]["adapt_site"] is None
    config["eval"].update(adapt_steps=3, adapt_lr=0.05)
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    assert eval_main([str(run), "--split", "heldout", "--adapt-site", "site2", "--no-heatmap"]) == 0
    adaptation = json.loads((run / "eval.json").read_text())["adaptation"]
    assert (adaptation["steps"], adaptation["lr"]) == (3, 0.05)
    assert adaptation["settings"]["steps"] == 3 and adaptation["settings"]["lr"] == 0.05
    assert eval_main([str(run), "--split", "heldout", "--adapt-site", "site2", "--adapt-steps", "1",
                      "--adapt-lr", "0.2", "--no-heatmap"]) == 0
    adaptation = json.loads((run / "eval.json").read_text())["adaptation"]
    assert (adaptation["steps"], adaptation["lr"]) == (1, 0.2)


@pytest.mark.slow
def test_fast_adaptation_in_an_evaluation_uses_the_strategys_own_rule(site_run, tmp_path):
    """eval.adapt_site: MAML adapts with its own rule (inner rate), standard training by fine-tuning."""
    from prism.config import build_config
    from prism.evaluation.adaptation import evaluation_rule
    from prism.registry import get_registry

    assert evaluation_rule(get_registry().create("strategy", "standard")) is fine_tune_rule
    cache, _ = site_run
    config = build_config(None, [f"data.cache={cache}", "data.patch_size=[16,16,16]", "data.batch_size=2",
                                 "train.steps=1", "model.options.width=4", "model.options.depth=3",
                                 "strategy.name=maml", "strategy.options={inner_lr: 0.07}",
                                 "eval.split=heldout", "eval.adapt_site=site2", "eval.adapt_steps=2",
                                 "eval.adapt_lr=0.5", "eval.hd95=false"])
    trainer = Trainer(config, tmp_path / "maml", cache_path=cache)
    trainer.fit()
    calls = []
    original = trainer.strategy.adapt

    def spy(model, support, loss_fn, *, steps=None, lr=None):
        calls.append((steps, lr, len(support)))
        return original(model, support, loss_fn, steps=steps, lr=lr)

    trainer.strategy.adapt = spy
    report = trainer.evaluate()
    assert calls == [(2, None, 2)]  # its own step size (0.07), not eval.adapt_lr; one batch per step
    assert report.adaptation is not None and report.adaptation.steps == 2


def test_every_rule_adapts_in_the_runs_precision(site_run):
    """amp_dtype reaches the steps of fine-tuning and of a strategy's own rule alike (autocast around the loop)."""
    from prism.evaluation.adaptation import strategy_rule
    from prism.registry import get_registry
    from prism.runs import load_run

    cache, run_dir = site_run
    run = load_run(run_dir)
    reader = CacheReader(cache)
    support = load_support(reader, list(reader.split("heldout"))[:1])
    reader.close()
    settings = AdaptationSettings(site="site2", steps=2, patch_size=(16, 16, 16))
    dtypes = []

    def recording_loss(output, batch):
        dtypes.append(output.logits.dtype)
        return adaptation_loss(output, batch)

    maml = get_registry().create("strategy", "maml", inner_steps=1)
    for rule in (fine_tune_rule, strategy_rule(run.strategy), strategy_rule(maml)):
        dtypes.clear()
        rule(run.model, support, settings, device=torch.device("cpu"), amp_dtype=torch.bfloat16,
             loss_fn=recording_loss)
        assert dtypes == [torch.bfloat16, torch.bfloat16]
