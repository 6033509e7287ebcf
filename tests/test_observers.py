"""Observers: a Python user's observer sees every event of a Trainer run, keeps its state across a resume, can stop
the run, and replaces or removes a built-in one."""

from __future__ import annotations

import csv

import pytest

from conftest import fast_config
from prism.engine.checkpoint import load_checkpoint
from prism.engine.observers import Observer
from prism.engine.progress import ProgressLines
from prism.engine.run import build_run
from prism.engine.trainer import CHECKPOINT_NAME, Trainer


class Recorder(Observer):
    """Records every event, and each step's loss parts read on the host (a test may make the host wait)."""

    name = "recorder"

    def __init__(self) -> None:
        self.events: list[tuple] = []
        self.step_parts: dict[int, dict[str, float]] = {}
        self.rows: list[dict[str, float]] = []

    def on_fit_start(self, trainer):
        self.events.append(("start", trainer.ctx.step))

    def on_step_start(self, trainer):
        self.events.append(("begin", trainer.ctx.step + 1))

    def on_step_end(self, trainer, parts):
        self.events.append(("step", trainer.ctx.step))
        self.step_parts[trainer.ctx.step] = {k: float(v) for k, v in parts.items()}

    def on_log(self, trainer, row):
        self.events.append(("log", int(row["step"])))
        self.rows.append(dict(row))

    def on_checkpoint(self, trainer, path):
        self.events.append(("checkpoint", trainer.ctx.step, path.name))

    def on_fit_end(self, trainer, error):
        self.events.append(("end", error))


@pytest.mark.slow
def test_a_custom_observer_sees_every_step_log_and_checkpoint_event(tiny_cache, tmp_path):
    recorder = Recorder()
    cfg = fast_config("train.steps=6", "train.log_every=2", "train.checkpoint_every=3", "train.loggers=[csv]",
                      cache=tiny_cache)
    trainer = Trainer(cfg, tmp_path / "run", cache_path=tiny_cache, observers=[recorder])
    history = trainer.fit()
    trainer.close()
    expected: list[tuple] = [("start", 0)]
    for step in range(1, 7):
        expected.append(("begin", step))
        if step % 2 == 0:
            expected.append(("log", step))  # the log row of a step comes before its on_step_end
        expected.append(("step", step))
        if step % 3 == 0:
            expected.append(("checkpoint", step, CHECKPOINT_NAME))  # written after user observers' on_step_end
    expected.append(("end", None))
    assert recorder.events == expected
    # each row holds the mean of its interval's steps, computed here from the steps' own parts
    for row in recorder.rows:
        step = int(row["step"])
        for part in ("loss", "fuse"):
            mean = (recorder.step_parts[step - 1][part] + recorder.step_parts[step][part]) / 2
            assert row[part] == pytest.approx(mean, rel=1e-6), (step, part)
    assert recorder.rows == history
    with open(tmp_path / "run" / "train_log.csv", newline="") as fh:
        logged = [{k: float(v) for k, v in r.items()} for r in csv.DictReader(fh)]
    assert [r["loss"] for r in logged] == pytest.approx([r["loss"] for r in history], rel=1e-6)


class StepCounter(Observer):
    name = "counter"

    def __init__(self) -> None:
        self.steps = 0

    def on_step_end(self, trainer, parts):
        self.steps += 1

    def state_dict(self):
        return {"steps": self.steps}

    def load_state_dict(self, state):
        self.steps = state["steps"]


class StopAt(Observer):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, trainer, parts):
        if trainer.ctx.step == self.step:
            trainer.request_stop("enough")


@pytest.mark.slow
def test_observer_state_is_checkpointed_and_an_observer_can_stop_the_run(tiny_cache, tmp_path):
    cfg = fast_config("train.steps=6", "train.checkpoint_every=100", "train.loggers=[csv]", cache=tiny_cache)
    run = tmp_path / "run"
    first = Trainer(cfg, run, cache_path=tiny_cache)
    first.add_observer(StepCounter())
    first.add_observer(StopAt(4))
    first.fit()
    first.close()
    assert load_checkpoint(run / CHECKPOINT_NAME)["step"] == 4  # the early stop wrote its final checkpoint
    assert load_checkpoint(run / CHECKPOINT_NAME)["observers"]["counter"] == {"steps": 4}
    counter = StepCounter()
    resumed = Trainer(cfg, run, cache_path=tiny_cache, resume=True, observers=[counter])
    assert counter.steps == 4  # restored when the run was resumed
    resumed.fit()
    resumed.close()
    assert counter.steps == 6 and load_checkpoint(run / CHECKPOINT_NAME)["step"] == 6


@pytest.mark.slow
def test_built_in_observers_are_replaced_or_removed_by_name(tiny_cache, tmp_path):
    cfg = fast_config("train.steps=2", cache=tiny_cache)
    trainer = Trainer(cfg, tmp_path / "run", cache_path=tiny_cache)
    names = [o.key for o in trainer.observers]
    assert names == ["progress", "csv", "tensorboard", "checkpoint", "signals"]
    lines: list[str] = []
    trainer.replace_observer("progress", ProgressLines(lines.append))
    trainer.remove_observer("tensorboard")
    with pytest.raises(ValueError, match="an observer named 'csv' is already attached"):
        trainer.add_observer(type("Csv", (Observer,), {"name": "csv"})())
    with pytest.raises(TypeError, match="must subclass prism.engine.observers.Observer"):
        trainer.add_observer(object())  # type: ignore[arg-type]
    with pytest.raises(KeyError, match="no observer named 'nope'"):
        trainer.remove_observer("nope")
    trainer.fit()
    trainer.close()
    assert len(lines) == 1 and lines[0].startswith("step 2/2  loss ")
    assert not (tmp_path / "run" / "tensorboard").exists()


@pytest.mark.slow
def test_build_run_gives_the_parts_for_a_loop_of_ones_own(tiny_cache):
    run = build_run(fast_config("train.steps=2", cache=tiny_cache), cache_path=tiny_cache)
    try:
        before = [p.detach().clone() for p in run.ctx.parameters()]
        for _ in range(2):
            parts = run.strategy.step(run.ctx)
            run.scheduler.step()
            run.ctx.step += 1
        assert {"loss", "fuse"} <= set(parts)
        assert any((a != b).any() for a, b in zip(before, run.ctx.parameters(), strict=True))
        assert run.optimizer is run.ctx.optimizer and run.streams is run.ctx.streams
    finally:
        run.close()
