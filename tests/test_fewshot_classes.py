"""Few-shot class tasks: the class-vs-rest logits and loss, held-out classes kept out of meta-training, and the
few-shot evaluation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from conftest import fast_config
from prism.adapt import class_logits, class_task_loss
from prism.batch import Batch
from prism.data.cache_reader import CacheReader
from prism.engine.trainer import Trainer
from prism.errors import ConfigError
from prism.evaluation.fewshot import fewshot_dice, fewshot_markdown
from prism.outputs import SegOutput

SGD = ["optim.name=sgd", "optim.momentum=0", "optim.weight_decay=0", "optim.grad_clip=null", "optim.lr=0.05"]


def test_class_logits_by_hand():
    z = torch.tensor([1.0, 2.0, -1.0, 0.5]).view(1, 4, 1, 1, 1)
    out = class_logits(z, 2, exclude=[3])
    assert out.shape == (1, 2, 1, 1, 1)
    assert out[0, 0].item() == pytest.approx(math.log(math.exp(1.0) + math.exp(2.0)))  # 3 left out of rest
    assert out[0, 1].item() == -1.0


def test_held_out_logit_gets_no_gradient_from_a_class_task():
    logits = torch.randn(2, 4, 3, 3, 3, requires_grad=True)
    label = torch.randint(0, 4, (2, 3, 3, 3))
    batch = Batch(image=torch.zeros(2, 1, 3, 3, 3), label=label, mask=torch.ones(2, 1, dtype=torch.bool),
                  availability=torch.ones(2, 1, dtype=torch.bool))
    class_task_loss(1, exclude=[3])(SegOutput(logits=logits), batch).backward()
    assert (logits.grad[:, 3] == 0).all() and (logits.grad[:, 1] != 0).any() and (logits.grad[:, 0] != 0).any()


def test_class_task_loss_is_cross_entropy_plus_soft_dice():
    logits = torch.tensor([[0.0, 1.0, -2.0], [0.0, -1.0, 3.0]]).reshape(1, 2, 1, 1, 3)  # K=2 channels, 3 voxels
    label = torch.tensor([1, 0, 1]).view(1, 1, 1, 3)
    batch = Batch(image=torch.zeros(1, 1, 1, 1, 3), label=label, mask=torch.ones(1, 1, dtype=torch.bool),
                  availability=torch.ones(1, 1, dtype=torch.bool))
    got = class_task_loss(1)(SegOutput(logits=logits), batch).item()
    z0, z1 = np.array([0.0, 1.0, -2.0]), np.array([0.0, -1.0, 3.0])  # rest is class 0 alone
    p1 = np.exp(z1) / (np.exp(z0) + np.exp(z1))
    t = np.array([1, 0, 1])
    ce = -np.mean(np.log(np.where(t == 1, p1, 1 - p1)))
    dice = (2 * (p1 * t).sum() + 1e-5) / (p1.sum() + t.sum() + 1e-5)
    assert got == pytest.approx(ce + 1 - dice, rel=1e-6)


@pytest.mark.slow
def test_class_tasks_never_use_a_held_out_class(tiny_cache, tmp_path):
    cfg = fast_config("strategy.name=maml", "strategy.options={tasks: class, held_out_classes: [3]}",
                      "train.steps=3", *SGD, cache=tiny_cache)
    trainer = Trainer(cfg, tmp_path, cache_path=tiny_cache)
    sampler, ctx = trainer.strategy.sampler, trainer.ctx
    assert 3 not in sampler.classes and sampler.classes
    for cls in sampler.classes:
        support, query = ctx.case_ids(f"support/class{cls}"), ctx.case_ids(f"query/class{cls}")
        assert support and query and not set(support) & set(query)
        assert all(cls in ctx.case_classes(c) for c in support + query)
    tasks = {sampler.sample(torch.Generator().manual_seed(s)).target_class for s in range(40)}
    assert tasks == set(sampler.classes)
    model = trainer.ctx.model
    rows = {n: p.detach()[3].clone() for n, p in model.named_parameters() if n in model.head_parameter_names()}
    others = {n: p.detach()[1].clone() for n, p in model.named_parameters() if n in model.head_parameter_names()}
    trainer.fit()
    params = dict(model.named_parameters())
    for n, row in rows.items():  # class 3's classifier is exactly as initialised: it never had a gradient
        assert torch.equal(params[n].detach()[3], row), n
    assert any(not torch.equal(params[n].detach()[1], others[n]) for n in others)


def test_held_out_classes_need_class_tasks(tiny_cache, tmp_path):
    cfg = fast_config("strategy.name=maml", "strategy.options={held_out_classes: [3]}", cache=tiny_cache)
    with pytest.raises(ConfigError, match="held_out_classes: only meaningful with tasks: class"):
        Trainer(cfg, tmp_path, cache_path=tiny_cache)
    cfg = fast_config("strategy.name=maml", "strategy.options={tasks: class, held_out_classes: [7]}",
                      cache=tiny_cache)
    with pytest.raises(ConfigError, match=r"held_out_classes: \[7\] are not foreground classes"):
        Trainer(cfg, tmp_path / "b", cache_path=tiny_cache)


@pytest.mark.slow
def test_fewshot_dice_adapts_with_the_runs_rule_and_leaves_the_model(tiny_cache, tmp_path):
    cfg = fast_config("strategy.name=maml", "strategy.options={tasks: class, held_out_classes: [3], inner_lr: 0.1}",
                      "train.steps=2", cache=tiny_cache)
    trainer = Trainer(cfg, tmp_path, cache_path=tiny_cache)
    trainer.fit()
    model, strategy = trainer.ctx.model, trainer.strategy
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    reader = CacheReader(tiny_cache)
    calls = []
    original = strategy.adapt

    def spy(*args, **kwargs):
        calls.append(kwargs["steps"])
        return original(*args, **kwargs)

    strategy.adapt = spy
    result = fewshot_dice(model, strategy, reader, reader.case_ids, classes=[3], shots=[1, 2], steps=2, draws=2,
                          exclude=[3], run="r", strategy_name="maml")
    assert result.dice.shape == (1, 2, 2) and ((0 <= result.dice) & (result.dice <= 1)).all()
    assert calls == [2] * 4  # one adaptation per (shots, draw), with the requested steps
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    assert all(len(s) == 1 for s in result.support["3/1"]) and all(len(s) == 2 for s in result.support["3/2"])
    assert "| r | maml | 3 |" in fewshot_markdown([result])
    with pytest.raises(ConfigError, match="--classes"):
        fewshot_dice(model, strategy, reader, reader.case_ids, classes=[9], shots=[1], steps=1)


@pytest.mark.slow
def test_prism_eval_fewshot_writes_its_report(tiny_cache, tmp_path, capsys):
    from prism.cli.evaluate import main as eval_main

    meta = tmp_path / "meta"
    Trainer(fast_config("strategy.name=maml", "strategy.options={tasks: class, held_out_classes: [3]}",
                        "train.steps=1", cache=tiny_cache), meta, cache_path=tiny_cache).fit()
    base = tmp_path / "base"
    Trainer(fast_config("train.steps=1", cache=tiny_cache), base, cache_path=tiny_cache).fit()
    assert eval_main(["fewshot", str(meta), "--shots", "1", "--steps", "1", "--draws", "1", "--split", "train",
                      "--baseline", str(base), "--max-query", "1"]) == 0
    out = capsys.readouterr().out
    assert "| meta | maml | 3 |" in out and "| base | standard | 3 |" in out
    import json

    data = json.loads((meta / "fewshot.json").read_text())
    runs = data["runs"]
    assert [d["strategy"] for d in runs] == ["maml", "standard"] and runs[0]["classes"] == [3]
    from prism.evaluation.provenance import checkpoint_record, report_matches_checkpoint

    assert data["checkpoint"] == checkpoint_record(meta / "last.pt") and report_matches_checkpoint(meta, "fewshot.json")
    assert runs[1]["checkpoint"] == checkpoint_record(base / "last.pt")
    assert (meta / "fewshot.md").is_file() and not (meta / "eval.json").exists()
    assert eval_main(["fewshot", str(base), "--shots", "1"]) == 2  # a standard run holds out nothing
    assert "--classes: the run holds out no class" in capsys.readouterr().err


@pytest.mark.slow
def test_synthetic_extra_classes_hold_out_on_synthetic_data(tmp_path):
    """--extra-classes labels CSF (4, dark on FLAIR) and white-matter hyperintensities (5, bright on FLAIR) in
    the same images; a class-task run holds class 5 out and few-shot evaluation adapts to it."""
    from prism.data_tools.synthetic import SynthSettings, make_case, write_synthetic_cache

    plain_image, plain_label, _ = make_case(0, SynthSettings(shape=(24, 24, 24), seed=5))
    image, label, _ = make_case(0, SynthSettings(shape=(24, 24, 24), seed=5, extra_classes=True))
    np.testing.assert_array_equal(image, plain_image)  # only the labels differ
    assert ((label <= 3) == (label == plain_label)).all() and {4, 5} <= set(np.unique(label).tolist())
    flair = image[0]
    assert flair[label == 4].mean() < flair[label == 0].mean() < flair[label == 5].mean()
    cache = tmp_path / "extra.h5"
    write_synthetic_cache(str(cache), SynthSettings(cases=6, shape=(24, 24, 24), seed=5, extra_classes=True),
                          test_fraction=0.34)
    cfg = fast_config("strategy.name=maml", "strategy.options={tasks: class, held_out_classes: [5]}",
                      "train.steps=2", cache=cache)
    trainer = Trainer(cfg, tmp_path / "run", cache_path=cache)
    assert trainer.ctx.model.num_classes == 6 and 5 not in trainer.strategy.sampler.classes
    trainer.fit()
    report = trainer.evaluate()
    assert report.regions == ("necrotic core", "edema", "enhancing tumour", "csf", "white-matter hyperintensity")
    reader = CacheReader(cache)
    result = fewshot_dice(trainer.ctx.model, trainer.strategy, reader, reader.case_ids, classes=[5], shots=[1],
                          steps=1, draws=1, exclude=[5])
    assert result.dice.shape == (1, 1, 1)
