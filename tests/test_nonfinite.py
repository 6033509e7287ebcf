"""A non-finite loss or gradient stops the run (one line naming the step and the parts, last.pt the last good
state, exit 3), or is skipped with ``train.nonfinite: skip``; a step that changes no parameter is reported."""

from __future__ import annotations

import csv
import logging

import pytest
import torch

from conftest import FAST, fast_config
from prism.cli.train import main as train_main
from prism.engine.checkpoint import load_checkpoint
from prism.engine.meter import NonFiniteError
from prism.engine.trainer import CHECKPOINT_NAME, Trainer
from prism.loss import LossResult, LossTerm
from prism.registry import register
from prism.strategy import Strategy

pytestmark = pytest.mark.slow  # every test here trains a model or spawns a process

POISON_AT = 3  # the forward that goes wrong (one forward per step with the standard strategy)


class Poisoned(LossTerm):
    """A term that is 0 until its ``POISON_AT``-th call, which is NaN."""

    def __init__(self, modalities, num_classes) -> None:
        super().__init__(modalities, num_classes)
        self.calls = 0

    def __call__(self, output, batch):
        self.calls += 1
        value = output.logits.float().mean() * 0
        if self.calls == POISON_AT:
            value = value + float("nan")
        return LossResult(value, {"poison": value.detach()})


class InfiniteGradient(LossTerm):
    """0 in value, but from its ``POISON_AT``-th call its gradient is not finite (d sqrt(x)/dx at x = 0)."""

    def __init__(self, modalities, num_classes) -> None:
        super().__init__(modalities, num_classes)
        self.calls = 0

    def __call__(self, output, batch):
        self.calls += 1
        x = output.logits.float().mean()
        value = torch.sqrt(x - x.detach()) if self.calls >= POISON_AT else x * 0
        return LossResult(value, {"root": value.detach()})


class Idle(Strategy):
    """Computes the loss and never updates anything."""

    def step(self, ctx):
        loss, parts = ctx.compute_loss(ctx.next_batch("train"))
        return parts


LOOP = ["train.steps=8", "train.log_every=4", "train.checkpoint_every=2", "train.loggers=[csv]"]


def _poisoned_config(cache, *extra):
    register("loss", "poisoned", Poisoned)
    return fast_config(*LOOP, "losses=[{name: fuse}, {name: poisoned}]", *extra, cache=cache)


def _finite(state) -> bool:
    return all(torch.isfinite(v).all() for v in state["model"].values())


def test_a_nan_loss_stops_at_the_next_read_naming_the_step_and_parts_and_keeps_the_last_good_checkpoint(
        tiny_cache, tmp_path):
    run = tmp_path / "run"
    trainer = Trainer(_poisoned_config(tiny_cache), run, cache_path=tiny_cache)
    with pytest.raises(NonFiniteError) as caught:
        trainer.fit()
    trainer.close()
    message = str(caught.value)
    assert message.startswith(f"step {POISON_AT}: non-finite loss part(s) poison, loss")
    assert "stopped at step 4" in message and f"{run / CHECKPOINT_NAME} holds step 2, the last good state" in message
    assert "\n" not in message and caught.value.exit_code == 3
    state = load_checkpoint(run / CHECKPOINT_NAME)
    assert state["step"] == 2 and _finite(state)  # the poisoned step 3 and step 4 were never written
    assert not (run / "train_log.csv").exists() or "nan" not in (run / "train_log.csv").read_text()


def test_the_cli_exits_3_with_one_line(tiny_cache, tmp_path, capsys):
    register("loss", "poisoned", Poisoned)
    run = tmp_path / "run"
    code = train_main(["--data", str(tiny_cache), "-o", str(run), "--no-eval", *FAST, *LOOP,
                       "losses=[{name: fuse}, {name: poisoned}]"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 3 and len(err) == 1
    assert err[0].startswith(f"prism-train: error: step {POISON_AT}: non-finite loss part(s) poison")
    assert load_checkpoint(run / CHECKPOINT_NAME)["step"] == 2


def test_a_non_finite_gradient_under_a_finite_loss_is_named(tiny_cache, tmp_path):
    register("loss", "rooted", InfiniteGradient)
    cfg = fast_config(*LOOP, "losses=[{name: fuse}, {name: rooted}]", cache=tiny_cache)
    trainer = Trainer(cfg, tmp_path / "run", cache_path=tiny_cache)
    with pytest.raises(NonFiniteError, match=rf"^step {POISON_AT}: non-finite gradient;"):
        trainer.fit()
    trainer.close()
    assert load_checkpoint(tmp_path / "run" / CHECKPOINT_NAME)["step"] == 2


def test_skip_leaves_the_bad_step_out_of_the_update_and_the_mean_and_counts_it(tiny_cache, tmp_path):
    run = tmp_path / "run"
    trainer = Trainer(_poisoned_config(tiny_cache, "train.nonfinite=skip"), run, cache_path=tiny_cache)
    history = trainer.fit()
    trainer.close()
    assert [int(r["step"]) for r in history] == [4, 8]
    assert [r["skipped"] for r in history] == [1, 0]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in history)
    state = load_checkpoint(run / CHECKPOINT_NAME)
    assert state["step"] == 8 and _finite(state)
    with open(run / "train_log.csv", newline="") as fh:
        assert [r["skipped"] for r in csv.DictReader(fh)] == ["1", "0"]


def test_skip_makes_no_update_on_the_bad_step(tiny_cache, tmp_path):
    trainer = Trainer(_poisoned_config(tiny_cache, "train.nonfinite=skip", "train.steps=3"), tmp_path / "run",
                      cache_path=tiny_cache)
    trainer.fit(stop_at=2)
    before = {k: v.clone() for k, v in trainer.ctx.model.state_dict().items()}
    trainer.fit()  # step 3 is the poisoned one
    trainer.close()
    after = trainer.ctx.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_a_step_that_changes_no_parameter_is_reported_once(tiny_cache, tmp_path, caplog):
    register("strategy", "idle", Idle)
    cfg = fast_config("strategy.name=idle", "train.steps=4", "train.log_every=2", "train.loggers=[csv]",
                      cache=tiny_cache)
    trainer = Trainer(cfg, tmp_path / "run", cache_path=tiny_cache)
    with caplog.at_level(logging.WARNING, logger="prism"):
        trainer.fit()
    trainer.close()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == ["step 1 changed no parameter: strategy 'idle' updated nothing (does its step call "
                        "ctx.backward and ctx.optimizer_step?)"]


def test_a_training_step_is_not_reported(tiny_cache, tmp_path, caplog):
    trainer = Trainer(fast_config("train.steps=2", "train.loggers=[csv]", cache=tiny_cache), tmp_path / "run",
                      cache_path=tiny_cache)
    with caplog.at_level(logging.WARNING, logger="prism"):
        trainer.fit()
    trainer.close()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
