"""The training engine: loss goes down, checkpoints are atomic and safe, resume is exact."""

from __future__ import annotations

import pickle

import pytest
import torch

from conftest import fast_config
from prism.engine.checkpoint import load_checkpoint, save_checkpoint
from prism.engine.trainer import CHECKPOINT_NAME, Trainer
from prism.errors import CheckpointError, ConfigError, PluginError


def params(trainer):
    return {k: v.detach().clone() for k, v in trainer.ctx.model.state_dict().items()}


@pytest.mark.slow
def test_short_run_lowers_the_loss(tiny_cache, tmp_path):
    cfg = fast_config("train.steps=40", "train.log_every=5", "train.checkpoint_every=100",
                      "data.foreground_fraction=1.0", cache=tiny_cache)
    history = Trainer(cfg, tmp_path / "run", cache_path=tiny_cache).fit()
    first, last = history[0]["loss"], sum(r["loss"] for r in history[-2:]) / 2
    assert last < 0.8 * first, (first, last)
    log = (tmp_path / "run" / "train_log.csv").read_text().splitlines()
    assert log[0].startswith("step,lr,fuse,loss") and len(log) == 1 + 8


@pytest.mark.slow
def test_resume_is_exact(tiny_cache, tmp_path):
    cfg = fast_config(cache=tiny_cache)
    straight = Trainer(cfg, tmp_path / "a", cache_path=tiny_cache)
    straight.fit()

    first = Trainer(cfg, tmp_path / "b", cache_path=tiny_cache)
    first.fit(stop_at=3)
    assert load_checkpoint(tmp_path / "b" / CHECKPOINT_NAME)["step"] == 3
    resumed = Trainer(cfg, tmp_path / "b", cache_path=tiny_cache, resume=True)
    assert resumed.ctx.step == 3
    resumed.fit()
    a, b = params(straight), params(resumed)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    rows = (tmp_path / "b" / "train_log.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["2", "4", "6"]


@pytest.mark.slow
def test_different_seed_gives_different_parameters(tiny_cache, tmp_path):
    a = Trainer(fast_config("train.steps=2", cache=tiny_cache), tmp_path / "a", cache_path=tiny_cache)
    b = Trainer(fast_config("train.steps=2", "train.seed=1", cache=tiny_cache), tmp_path / "b", cache_path=tiny_cache)
    a.fit()
    b.fit()
    assert any(not torch.equal(x, y) for x, y in zip(params(a).values(), params(b).values(), strict=True))


def test_checkpoint_is_written_atomically_and_loads_weights_only(tmp_path):
    path = tmp_path / "ck.pt"
    save_checkpoint(path, {"step": 1, "w": torch.ones(2)})
    assert [p.name for p in tmp_path.iterdir()] == ["ck.pt"]
    assert load_checkpoint(path)["step"] == 1

    class Boom:
        def __reduce__(self):
            raise RuntimeError("disk full")

    with pytest.raises(Exception, match="disk full"):
        save_checkpoint(path, {"step": 2, "bad": Boom()})
    assert load_checkpoint(path)["step"] == 1  # the old checkpoint is intact, no temporary left
    assert [p.name for p in tmp_path.iterdir()] == ["ck.pt"]


def test_unsafe_or_broken_checkpoints_are_refused(tmp_path):
    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps({"format": "prism-checkpoint", "x": print}))
    with pytest.raises(CheckpointError, match="evil.pt: holds pickled Python objects"):
        load_checkpoint(evil)
    truncated = tmp_path / "trunc.pt"
    save_checkpoint(truncated, {"step": 1, "w": torch.ones(1000)})
    truncated.write_bytes(truncated.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="trunc.pt: unreadable checkpoint"):
        load_checkpoint(truncated)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nothing.pt")


def test_build_errors_name_the_field(tiny_cache, tmp_path):
    with pytest.raises(PluginError, match="strategy.name: unknown meta-strategy 'mamba'"):
        Trainer(fast_config("strategy.name=mamba", cache=tiny_cache), tmp_path, cache_path=tiny_cache)
    with pytest.raises(ConfigError, match=r"data.patch_size: \[18, 16, 16\] must be multiples of 4"):
        Trainer(fast_config("data.patch_size=[18,16,16]", cache=tiny_cache), tmp_path, cache_path=tiny_cache)
    with pytest.raises(PluginError, match="losses.0.name: unknown loss 'fuze'; did you mean 'fuse'"):
        Trainer(fast_config("losses.0.name=fuze", cache=tiny_cache), tmp_path, cache_path=tiny_cache)


def test_loss_needs_are_checked_against_backbone(tiny_cache, tmp_path):
    from prism.loss import LossResult, LossTerm
    from prism.registry import register

    class NeedsUni(LossTerm):
        needs = frozenset({"uni"})

        def __call__(self, output, batch):
            return LossResult(output.uni.float().mean())

    register("loss", "needs_uni", NeedsUni)
    from prism.plugins.backbones.multi_unet import MultiEncoderUNet

    class Plain(MultiEncoderUNet):
        provides = frozenset({"logits"})

    register("backbone", "plain", Plain)
    cfg = fast_config("model.name=plain", "losses=[{name: needs_uni}]", cache=tiny_cache)
    with pytest.raises(PluginError, match=r"loss 'needs_uni' needs SegOutput part\(s\) \['uni'\] that backbone"):
        Trainer(cfg, tmp_path, cache_path=tiny_cache)


def test_compile_is_refused_where_it_would_break_the_inner_loop(tiny_cache, tmp_path):
    with pytest.raises(ConfigError, match="train.compile: refused with strategy 'maml': torch.compile around a "
                                          "functional_call inner loop"):
        Trainer(fast_config("strategy.name=maml", "train.compile=true", cache=tiny_cache), tmp_path,
                cache_path=tiny_cache)


@pytest.mark.slow
def test_tensorboard_scalars_when_installed(tiny_cache, tmp_path):
    pytest.importorskip("tensorboard")
    Trainer(fast_config("train.steps=2", cache=tiny_cache), tmp_path / "run", cache_path=tiny_cache).fit()
    assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))


def test_patch_larger_than_every_volume_is_refused(tiny_cache, tmp_path):
    with pytest.raises(ConfigError, match=r"data.patch_size: \[32, 32, 32\] is larger than every training volume"):
        Trainer(fast_config("data.patch_size=[32,32,32]", cache=tiny_cache), tmp_path, cache_path=tiny_cache)


def test_csv_log_rewrite_on_resume_keeps_rows_up_to_the_checkpoint(tmp_path):
    from prism.engine.metrics_log import CsvLog

    path = tmp_path / "log.csv"
    log = CsvLog(path)
    for step in (1, 2, 3, 4):
        log.write({"step": step, "loss": 1.0 / step})
    CsvLog(path, resume_step=2).write({"step": 3, "loss": 0.5})
    rows = path.read_text().splitlines()
    assert rows == ["step,loss", "1,1.0", "2,0.5", "3,0.5"]
    assert [p.name for p in tmp_path.iterdir()] == ["log.csv"]


def test_augmentation_from_config_changes_patches(tiny_cache, tmp_path):
    plain = Trainer(fast_config(cache=tiny_cache), tmp_path / "a", cache_path=tiny_cache)
    augmented = Trainer(fast_config("data.intensity_scale=0.3", "data.intensity_shift=0.2", "data.rotate_degrees=10",
                                    cache=tiny_cache), tmp_path / "b", cache_path=tiny_cache)
    assert plain.ctx.streams.augment is None and augmented.ctx.streams.augment.rotate_degrees == 10
    a, b = plain.ctx.streams.next("train"), augmented.ctx.streams.next("train")
    assert a.case_ids == b.case_ids and not torch.equal(a.image, b.image)
    with pytest.raises(ConfigError, match="data.rotate_degrees: Input should be less than or equal to 45"):
        fast_config("data.rotate_degrees=90")


@pytest.mark.slow
def test_a_resume_with_more_steps_stretches_the_schedule_and_keeps_training(tiny_cache, tmp_path):
    run = tmp_path / "run"
    short = Trainer(fast_config("train.steps=4", "train.log_every=1", cache=tiny_cache), run, cache_path=tiny_cache)
    short.fit()
    short.close()
    assert short.ctx.learning_rate() == 0.0  # the end of a polynomial schedule
    frozen = {k: v.clone() for k, v in short.ctx.model.state_dict().items()}
    longer = Trainer(fast_config("train.steps=8", "train.log_every=1", cache=tiny_cache), run, cache_path=tiny_cache,
                     resume=True)
    rows = longer.fit()
    longer.close()
    cfg = longer.config.optim
    expected = [cfg.lr * (1 - s / 8) ** cfg.poly_power for s in range(5, 9)]  # the closed form, stretched to 8
    assert [r["lr"] for r in rows] == pytest.approx(expected, rel=1e-6)
    assert any(not torch.equal(frozen[k], v) for k, v in longer.ctx.model.state_dict().items())


@pytest.mark.slow
def test_fit_in_two_calls_logs_as_one(tiny_cache, tmp_path):
    trainer = Trainer(fast_config(cache=tiny_cache), tmp_path / "run", cache_path=tiny_cache)
    trainer.fit(stop_at=3)
    trainer.fit()
    trainer.close()
    rows = (tmp_path / "run" / "train_log.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["2", "4", "6"]


@pytest.mark.slow
def test_optimizer_step_clips_the_gradient_norm(tiny_cache, tmp_path):
    cfg = fast_config("optim.name=sgd", "optim.momentum=0", "optim.weight_decay=0", "optim.lr=0.5",
                      "optim.grad_clip=0.001", cache=tiny_cache)
    trainer = Trainer(cfg, tmp_path / "run", cache_path=tiny_cache)
    ctx = trainer.ctx
    loss, _ = ctx.compute_loss(ctx.next_batch())
    ctx.zero_grad()
    ctx.backward(loss)
    params = [p for p in ctx.parameters() if p.grad is not None]
    before = [p.detach().clone() for p in params]
    grads = [p.grad.clone() for p in params]
    norm = torch.sqrt(sum((g.double() ** 2).sum() for g in grads))
    assert norm > 0.001  # so the clip applies: factor = clip / (norm + 1e-6), as torch.nn.utils.clip_grad_norm_
    ctx.optimizer_step()
    trainer.close()
    factor = 0.001 / (norm + 1e-6)
    for p, p0, g in zip(params, before, grads, strict=True):
        torch.testing.assert_close(p.detach().double(), p0.double() - 0.5 * factor * g.double(), rtol=1e-5,
                                   atol=1e-7)
