"""Resume is bitwise exact whatever the run draws from: a backbone with dropout (torch's global generator) and
patch augmentation, killed at 5 steps drawn from a seed, each resumed in a process whose global generators were
disturbed, ends with the weights, optimizer state and log of the run that was never stopped."""

from __future__ import annotations

import csv
import random

import numpy as np
import pytest
import torch
from torch import nn

from conftest import KillAt, Killed, fast_config
from prism.engine.trainer import Trainer
from prism.plugins.backbones.multi_unet import MultiEncoderUNet
from prism.registry import register

STEPS = 10
KILLS = sorted(random.Random(2026).sample(range(1, STEPS), 5))  # five kill points, the same in every run
CONFIG = ["model.name=dropout_unet", f"train.steps={STEPS}", "train.checkpoint_every=2", "train.log_every=3",
          "train.loggers=[csv]", "data.intensity_scale=0.2", "data.intensity_shift=0.1",
          "data.rotate_degrees=10", "data.rotate_probability=0.5"]


class DropoutUNet(MultiEncoderUNet):
    """The multi-encoder U-Net with channel dropout before every decoder block (torch's global generator) and a
    training-time jitter of its logits drawn from NumPy's and Python's global generators."""

    def __init__(self, modalities, num_classes, **options) -> None:
        super().__init__(modalities, num_classes, **options)
        self.decoders = nn.ModuleList(nn.Sequential(nn.Dropout3d(0.3), block) for block in self.decoders)

    def forward(self, image, mask):
        out = super().forward(image, mask)
        if self.training:
            out.logits = out.logits * (1 + 0.01 * (random.random() - float(np.random.rand())))
        return out


def _disturb_global_generators() -> None:
    """What a new process would hold: anything but the killed run's states."""
    torch.manual_seed(12345)
    torch.rand(7)
    np.random.seed(54321)
    random.seed(999)


def _log(run) -> list[dict[str, str]]:
    with open(run / "train_log.csv", newline="") as fh:
        return [{k: v for k, v in r.items() if k != "samples_per_s"} for r in csv.DictReader(fh)]


def _state(trainer) -> tuple[dict[str, torch.Tensor], dict]:
    return ({k: v.clone() for k, v in trainer.ctx.model.state_dict().items()}, trainer.ctx.optimizer.state_dict())


@pytest.mark.slow
def test_dropout_and_augmentation_resume_bitwise_at_five_kill_points(tiny_cache, tmp_path):
    register("backbone", "dropout_unet", DropoutUNet)
    cfg = fast_config(*CONFIG, cache=tiny_cache)
    straight = Trainer(cfg, tmp_path / "straight", cache_path=tiny_cache)
    straight.fit()
    straight.close()
    weights, optim = _state(straight)
    assert any(isinstance(m, nn.Dropout3d) for m in straight.ctx.model.modules())
    assert straight.ctx.streams.augment is not None
    for kill in KILLS:
        run = tmp_path / f"killed-at-{kill}"
        first = Trainer(cfg, run, cache_path=tiny_cache, observers=[KillAt(kill)])
        with pytest.raises(Killed):
            first.fit()
        first.close()
        _disturb_global_generators()
        resumed = Trainer(cfg, run, cache_path=tiny_cache, resume=True)
        assert resumed.ctx.step == (kill - 1) - (kill - 1) % 2  # the last checkpoint before the kill
        resumed.fit()
        resumed.close()
        got_weights, got_optim = _state(resumed)
        for key in weights:
            torch.testing.assert_close(got_weights[key], weights[key], rtol=0, atol=0, msg=f"kill {kill}: {key}")
        for pid, state in optim["state"].items():
            for key, value in state.items():
                torch.testing.assert_close(got_optim["state"][pid][key], value, rtol=0, atol=0)
        assert _log(run) == _log(tmp_path / "straight"), f"kill {kill}"


def test_a_run_does_not_draw_from_the_global_generators_to_make_batches(tiny_cache, tmp_path):
    """Re-creating the streams (what a resume does) leaves torch's, NumPy's and Python's generators alone, and the
    samples do not depend on those generators."""
    cfg = fast_config("data.intensity_scale=0.2", "data.rotate_degrees=10", cache=tiny_cache)
    trainer = Trainer(cfg, tmp_path / "run", cache_path=tiny_cache)
    streams = trainer.ctx.streams
    states = torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()
    first = streams.next("train")
    streams.load_state_dict({"train": 0})  # re-opens the DataLoader
    _disturb_global_generators()
    states_after = torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()
    again = streams.next("train")
    assert torch.equal(first.image, again.image) and first.case_ids == again.case_ids
    assert torch.equal(torch.get_rng_state(), states_after[0])  # drawing the batch took nothing from them
    assert (np.random.get_state()[1] == states_after[1]).all() and random.getstate() == states_after[2]
    assert not torch.equal(states[0], states_after[0])  # (the disturbance did change them)
    trainer.close()
