"""Validation during training (train.val_every), best.pt, and the progress line's rate and ETA."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from conftest import fast_config
from prism.data_tools.synthetic import SynthSettings, write_synthetic_cache
from prism.engine.checkpoint import load_checkpoint
from prism.engine.trainer import BEST_NAME, CHECKPOINT_NAME, Trainer, eta_text, rate_text
from prism.engine.validation import validation_dice, validation_masks
from prism.errors import ConfigError
from prism.evaluation.options import EvalOptions
from prism.evaluation.report import evaluate


@pytest.fixture(scope="module")
def val_cache(tmp_path_factory):
    path = tmp_path_factory.mktemp("val") / "val.h5"
    write_synthetic_cache(str(path), SynthSettings(cases=8, shape=(24, 24, 24), seed=5), test_fraction=0.25,
                          val_fraction=0.25)
    return path


def _config(cache, *extra):
    return fast_config("train.steps=6", "train.val_every=2", "train.val_cases=2", "train.loggers=[csv]",
                       "train.checkpoint_every=100", *extra, cache=cache)


def test_validation_masks_are_the_single_modalities_then_all():
    m = validation_masks(4)
    assert m.tolist() == [[True, False, False, False], [False, True, False, False], [False, False, True, False],
                          [False, False, False, True], [True, True, True, True]]
    assert validation_masks(1).tolist() == [[True]]


@pytest.mark.slow
def test_validation_dice_agrees_with_the_full_evaluation(val_cache, tmp_path):
    trainer = Trainer(_config(val_cache), tmp_path / "run", cache_path=val_cache)
    trainer.fit(stop_at=2)
    model, reader = trainer.ctx.model, trainer.reader
    cases = list(trainer.val_cases)
    got = validation_dice(model, reader, cases, device=trainer.device)
    assert model.training  # left as it was
    # the run's options reach it, but validation stays one cheap pass: no mirroring, every combination at once
    options = EvalOptions.from_config(_config(val_cache, "eval.tta=mirror", "eval.combos_per_pass=1").eval)
    assert validation_dice(model, reader, cases, device=trainer.device, options=options) == got
    report = evaluate(model, reader, cases, device=trainer.device,
                      options=EvalOptions(compute_hd95=False))  # an independent code path
    rows = [i for i, mask in enumerate(report.combination_masks) if sum(mask) in (1, len(mask))]
    assert len(rows) == 5
    expected = np.nanmean(report.dice[:, rows, :])
    assert got == pytest.approx(float(expected), abs=1e-9)
    trainer.close()


@pytest.mark.slow
def test_val_every_logs_and_keeps_the_best_weights_and_resume_keeps_the_best(val_cache, tmp_path):
    run = tmp_path / "run"
    trainer = Trainer(_config(val_cache), run, cache_path=val_cache)
    trainer.fit(stop_at=4)
    trainer.close()
    with open(run / "val_log.csv", newline="") as fh:
        rows = [{k: float(v) for k, v in r.items()} for r in csv.DictReader(fh)]
    assert [int(r["step"]) for r in rows] == [2, 4]
    best_row = max(rows, key=lambda r: r["val_dice"])
    best = load_checkpoint(run / BEST_NAME)
    assert best["val_dice"] == pytest.approx(best_row["val_dice"]) and best["step"] == int(best_row["step"])
    assert [r["best_val_dice"] for r in rows] == pytest.approx(list(np.maximum.accumulate([r["val_dice"]
                                                                                        for r in rows])))
    if int(best_row["step"]) == 4:  # the best weights are the weights at that step
        last = load_checkpoint(run / CHECKPOINT_NAME)
        for a, b in zip(best["model"].values(), last["model"].values(), strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    resumed = Trainer(_config(val_cache), run, cache_path=val_cache, resume=True)
    assert resumed.best_val == pytest.approx(best_row["val_dice"])
    resumed.fit()
    resumed.close()
    with open(run / "val_log.csv", newline="") as fh:
        assert [int(r["step"]) for r in csv.DictReader(fh)] == [2, 4, 6]
    assert load_checkpoint(run / BEST_NAME)["val_dice"] >= best_row["val_dice"]


def test_val_every_without_a_validation_split_names_the_field(tiny_cache, tmp_path):
    with pytest.raises(ConfigError, match=r"train\.val_split: no split 'val'"):
        Trainer(_config(tiny_cache), tmp_path / "run", cache_path=tiny_cache)
    assert not (tmp_path / "run").exists()


def test_rate_and_eta_texts():
    assert rate_text(12.34) == "12.3 samples/s"
    assert rate_text(0.04) == "25.0 s/sample"  # never "0.0 samples/s"
    assert eta_text(3723) == "1:02:03" and eta_text(59.6) == "0:01:00"
