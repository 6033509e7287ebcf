"""bf16 weight copies made in one kernel per forward give bitwise the training of plain autocast, with fewer
kernel launches."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from conftest import fast_config
from prism.engine.half_weights import castable_parameters
from prism.engine.trainer import Trainer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from launch_counter import LaunchCounter  # noqa: E402

PRISM = "losses=[{name: prism, options: {beta: 0.5, delta: 0.1}}]"


def _bf16_trainer(cache, run, once: bool, *extra: str) -> Trainer:
    trainer = Trainer(fast_config("train.steps=3", "train.loggers=[csv]", PRISM, *extra, cache=cache), run,
                      cache_path=cache)
    trainer.ctx.amp_dtype = torch.bfloat16  # CPU autocast (train.amp applies on CUDA only)
    trainer.ctx.cast_weights_once = once
    return trainer


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["standard", "meta_drop"])
def test_weight_copies_train_bitwise_like_autocast(tiny_cache, tmp_path, strategy):
    weights = {}
    for once in (False, True):
        trainer = _bf16_trainer(tiny_cache, tmp_path / f"run-{once}", once, f"strategy.name={strategy}")
        trainer.fit()
        trainer.close()
        weights[once] = trainer.ctx.model.state_dict()
    for key, value in weights[False].items():
        torch.testing.assert_close(weights[True][key], value, rtol=0, atol=0, msg=key)


@pytest.mark.slow
def test_weight_copies_launch_fewer_casts(tiny_cache, tmp_path):
    counts = {}
    for once in (False, True):
        trainer = _bf16_trainer(tiny_cache, tmp_path / f"run-{once}", once)
        ctx = trainer.ctx
        batch = ctx.next_batch()
        with LaunchCounter() as counter:
            loss, _ = ctx.compute_loss(batch)
            ctx.backward(loss)
        counts[once] = counter.ops["_to_copy"]
        trainer.close()
    weights = len(castable_parameters(trainer.ctx.model))
    assert counts[True] <= counts[False] - 2 * weights + 2  # two casts per weight became one copy each way
