"""train.early_stop: the patience count on a sequence of validation scores worked out by hand, a run that stops
early writes its final checkpoint and is evaluated as after a normal end, its counters are checkpointed (a resume
of a stopped run trains no further unless the patience is raised), and the config's one-line refusals."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest

from conftest import FAST, fast_config
from prism.cli.train import main as train_main
from prism.config import EarlyStopConfig, build_config
from prism.data_tools.synthetic import SynthSettings, write_synthetic_cache
from prism.engine.checkpoint import load_checkpoint
from prism.engine.early_stop import EarlyStopping
from prism.engine.trainer import CHECKPOINT_NAME, Trainer
from prism.errors import ConfigError


@pytest.fixture(scope="module")
def val_cache(tmp_path_factory):
    path = tmp_path_factory.mktemp("val") / "val.h5"
    write_synthetic_cache(str(path), SynthSettings(cases=8, shape=(24, 24, 24), seed=5), test_fraction=0.25,
                          val_fraction=0.25)
    return path


class FakeTrainer:
    def __init__(self) -> None:
        self.ctx = SimpleNamespace(step=0)
        self.stops: list[tuple[int, str]] = []

    def request_stop(self, reason: str) -> None:
        self.stops.append((self.ctx.step, reason))


def _feed(observer: EarlyStopping, trainer: FakeTrainer, scores: list[float]) -> None:
    for i, score in enumerate(scores, start=1):
        trainer.ctx.step = 10 * i
        observer.on_validation(trainer, score, max(scores[:i]))


def test_patience_counts_validations_that_do_not_improve_by_more_than_min_delta():
    trainer = FakeTrainer()
    observer = EarlyStopping(EarlyStopConfig(patience=2, min_delta=0.01))
    # 0.5 improves on nothing; 0.6 > 0.5 + 0.01 improves; 0.6 and 0.605 (not > 0.61) do not: two in a row
    _feed(observer, trainer, [0.5, 0.6, 0.6, 0.605])
    assert [step for step, _ in trainer.stops] == [40]
    assert "for 2 validations (best 0.6000 at step 20)" in trainer.stops[0][1]
    assert observer.state_dict() == {"best": 0.6, "best_step": 20, "waited": 2}


def test_an_improvement_resets_the_count_and_a_nan_score_never_improves():
    trainer = FakeTrainer()
    observer = EarlyStopping(EarlyStopConfig(patience=3))
    _feed(observer, trainer, [0.3, 0.2, 0.25, 0.31, math.nan, 0.31, 0.1])
    # 0.31 (step 40) resets; then NaN, 0.31 (not above 0.31) and 0.1 make three
    assert [step for step, _ in trainer.stops] == [70]
    assert observer.best_step == 40


def test_a_restored_counter_that_ran_out_stops_a_resumed_run_at_once():
    trainer = FakeTrainer()
    observer = EarlyStopping(EarlyStopConfig(patience=2))
    observer.load_state_dict({"best": 0.5, "best_step": 10, "waited": 2})
    observer.on_fit_start(trainer)
    assert len(trainer.stops) == 1
    more_patience = EarlyStopping(EarlyStopConfig(patience=3))
    more_patience.load_state_dict({"best": 0.5, "best_step": 10, "waited": 2})
    more_patience.on_fit_start(trainer)
    assert len(trainer.stops) == 1  # a larger patience lets it train on


@pytest.mark.slow
def test_a_run_stopped_early_is_checkpointed_and_evaluated_as_after_a_normal_end(val_cache, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    # min_delta 1: no validation after the first can improve, so the second one (step 2) stops the run
    stop = ["train.steps=20", "train.val_every=1", "train.val_cases=1", "train.loggers=[csv]",
            "train.checkpoint_every=100", "train.early_stop={patience: 1, min_delta: 1.0}", "eval.max_cases=1",
            "eval.hd95=false"]
    assert train_main(["--data", str(val_cache), "-o", str(run), *FAST, *stop]) == 0
    last = load_checkpoint(run / CHECKPOINT_NAME)
    assert last["step"] == 2  # the final checkpoint of the stopped run
    assert last["observers"]["early_stop"]["waited"] == 1
    evaluated = json.loads((run / "eval.json").read_text())
    assert evaluated["checkpoint"]["step"] == 2  # the evaluation scored the checkpoint the stop wrote
    cfg = build_config(None, [*FAST, *stop, f"data.cache={val_cache}"])
    again = Trainer(cfg, run, cache_path=val_cache, resume=True)
    assert again.fit() == [] and again.ctx.step == 2  # a resume of the stopped run trains no further
    again.close()
    patient = build_config(None, [*FAST, *stop[:-4], "train.early_stop={patience: 3, min_delta: 1.0}",
                                  f"data.cache={val_cache}"])
    longer = Trainer(patient, run, cache_path=val_cache, resume=True)
    longer.fit()
    assert longer.ctx.step == 4  # two more validations without improvement: 3 in a row at step 4
    longer.close()


@pytest.mark.parametrize(("overrides", "message"), [
    (["train.early_stop={patience: 3}"], "train.early_stop: watches the validation Dice, so it needs "
                                         "train.val_every"),
    (["train.val_every=5", "train.early_stop={patience: 0}"], "train.early_stop.patience: Input should be "
                                                              "greater than or equal to 1"),
    (["train.val_every=5", "train.early_stop={metric: loss}"], "train.early_stop.metric: Input should be "
                                                               "'val_dice'"),
    (["train.val_every=5", "train.early_stop.min_delta=-0.1"], "train.early_stop.min_delta: Input should be "
                                                               "greater than or equal to 0"),
])
def test_early_stop_mistakes_are_one_line(overrides, message):
    with pytest.raises(ConfigError) as err:
        build_config(None, overrides)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_dotted_override_turns_early_stopping_on_with_the_other_defaults(tiny_cache):
    cfg = fast_config("train.val_every=2", "train.early_stop.patience=2", cache=tiny_cache)
    assert cfg.train.early_stop == EarlyStopConfig(patience=2, min_delta=0.0, metric="val_dice")
    assert fast_config(cache=tiny_cache).train.early_stop is None
