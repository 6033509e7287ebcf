"""train.ema: the average after two steps is the closed form written here, one update is one multi-tensor op with
no host sync, a resumed run is bitwise the straight one, and validation, best.pt and the evaluation use the
average while training continues from the weights themselves."""

from __future__ import annotations

import csv

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from conftest import fast_config
from prism.data_tools.synthetic import SynthSettings, write_synthetic_cache
from prism.engine.checkpoint import load_checkpoint
from prism.engine.ema import WeightAverage
from prism.engine.observers import Observer
from prism.engine.trainer import BEST_NAME, CHECKPOINT_NAME, Trainer
from prism.engine.validation import validation_dice
from prism.evaluation.options import EvalOptions

DECAY = 0.8


@pytest.fixture(scope="module")
def val_cache(tmp_path_factory):
    path = tmp_path_factory.mktemp("val") / "val.h5"
    write_synthetic_cache(str(path), SynthSettings(cases=8, shape=(24, 24, 24), seed=5), test_fraction=0.25,
                          val_fraction=0.25)
    return path


class WeightLog(Observer):
    """The model's own weights at the start and after every step."""

    def __init__(self) -> None:
        self.weights: list[dict[str, torch.Tensor]] = []

    def _keep(self, trainer) -> None:
        self.weights.append({k: v.detach().clone() for k, v in trainer.ctx.model.state_dict().items()})

    def on_fit_start(self, trainer):
        self._keep(trainer)

    def on_step_end(self, trainer, parts):
        self._keep(trainer)


@pytest.mark.slow
def test_the_average_after_two_steps_is_the_closed_form(tiny_cache, tmp_path):
    log = WeightLog()
    cfg = fast_config("train.steps=2", f"train.ema={DECAY}", "train.loggers=[csv]", cache=tiny_cache)
    trainer = Trainer(cfg, tmp_path / "run", cache_path=tiny_cache, observers=[log])
    trainer.fit()
    trainer.close()
    w0, w1, w2 = log.weights
    saved = load_checkpoint(tmp_path / "run" / CHECKPOINT_NAME)
    d = DECAY
    averaged = [k for k, v in w0.items() if v.is_floating_point()]
    assert averaged
    for key in averaged:
        expected = d * d * w0[key] + d * (1 - d) * w1[key] + (1 - d) * w2[key]
        torch.testing.assert_close(saved["model"][key], expected, rtol=1e-5, atol=1e-6, msg=key)
        assert torch.equal(saved["training_model"][key], w2[key]), key  # training goes on from w2 itself
    moved = [k for k in averaged if not torch.equal(w2[k], w0[k])]
    assert moved and any(not torch.allclose(saved["model"][k], w2[k]) for k in moved)
    for key in set(w0) - set(averaged):  # integer buffers: the model's own
        assert torch.equal(saved["model"][key], w2[key])


class OpCounter(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


def test_an_update_is_one_multi_tensor_op_with_no_host_read():
    model = torch.nn.Sequential(torch.nn.Conv3d(2, 4, 3), torch.nn.InstanceNorm3d(4, affine=True),
                                torch.nn.Conv3d(4, 3, 1))
    ema = WeightAverage(model, 0.9)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    with OpCounter() as counter:
        ema.update()
    assert counter.ops == ["_foreach_lerp_"]
    for name, p in model.named_parameters():  # and it is the average: 0.9 * w0 + 0.1 * (w0 + 1)
        torch.testing.assert_close(ema.averaged_state()[name], p.detach() - 0.9)


def test_applied_swaps_the_average_in_and_the_weights_back():
    model = torch.nn.Linear(3, 2)
    ema = WeightAverage(model, 0.5)
    trained = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model.weight.add_(2.0)
    ema.update()
    live = model.weight.detach().clone()
    with ema.applied() as swapped:
        assert swapped is model
        torch.testing.assert_close(model.weight.detach(), trained["weight"] + 1.0)  # 0.5 w0 + 0.5 (w0 + 2)
        assert torch.equal(ema.trained_state()["weight"], live)
        with pytest.raises(RuntimeError, match="update after the block ends"):
            ema.update()
    assert torch.equal(model.weight.detach(), live)


@pytest.mark.slow
def test_a_resumed_run_with_the_average_is_bitwise_the_straight_one(tiny_cache, tmp_path):
    cfg = fast_config("train.steps=6", "train.checkpoint_every=3", f"train.ema={DECAY}", "train.loggers=[csv]",
                      cache=tiny_cache)
    straight = Trainer(cfg, tmp_path / "straight", cache_path=tiny_cache)
    straight.fit()
    straight.close()
    first = Trainer(cfg, tmp_path / "resumed", cache_path=tiny_cache)
    first.fit(stop_at=3)
    first.close()
    second = Trainer(cfg, tmp_path / "resumed", cache_path=tiny_cache, resume=True)
    second.fit()
    second.close()
    a = load_checkpoint(tmp_path / "straight" / CHECKPOINT_NAME)
    b = load_checkpoint(tmp_path / "resumed" / CHECKPOINT_NAME)
    for part in ("model", "training_model"):
        assert a[part].keys() == b[part].keys()
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), (part, key)
    assert not all(torch.equal(a["model"][k], a["training_model"][k]) for k in a["model"])


@pytest.mark.slow
def test_validation_best_and_the_evaluation_use_the_average(val_cache, tmp_path):
    run = tmp_path / "run"
    cfg = fast_config("train.steps=4", "train.val_every=2", "train.val_cases=2", f"train.ema={DECAY}",
                      "train.loggers=[csv]", "eval.max_cases=1", "eval.hd95=false", cache=val_cache)
    trainer = Trainer(cfg, run, cache_path=val_cache)
    trainer.fit()
    with open(run / "val_log.csv", newline="") as fh:
        scores = {int(r["step"]): float(r["val_dice"]) for r in csv.DictReader(fh)}
    last = load_checkpoint(run / CHECKPOINT_NAME)
    model = trainer.ctx.model
    trained = {k: v.clone() for k, v in model.state_dict().items()}

    def score_with(weights) -> float:
        model.load_state_dict(weights)
        return validation_dice(model, trainer.reader, trainer.val_cases, device=trainer.device,
                               options=EvalOptions.from_config(cfg.eval, channels_last=cfg.train.channels_last))

    assert scores[4] == score_with(last["model"])  # the step-4 validation scored the average
    assert scores[4] != score_with(last["training_model"])  # ... not the weights training goes on from
    best = load_checkpoint(run / BEST_NAME)
    assert best["val_dice"] == max(scores.values())
    assert score_with(best["model"]) == best["val_dice"]  # best.pt's weights are the average that scored it
    model.load_state_dict(trained)
    report = trainer.evaluate()
    assert report is not None
    after = model.state_dict()
    assert all(torch.equal(after[k], trained[k]) for k in trained)  # the weights came back after the evaluation
    trainer.close()
