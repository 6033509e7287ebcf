"""Lesion-wise Dice and HD95 as the BraTS 2023 challenge code computes them: known values on hand-built masks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from prism.evaluation.hausdorff import hd95
from prism.evaluation.lesion import LesionSettings, lesion_metrics, lesion_scores


def _box(shape, lo, hi):
    m = np.zeros(shape, dtype=bool)
    m[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = True
    return m


SHAPE = (40, 40, 40)


def test_found_missed_small_and_false_positive_lesions():
    a = _box(SHAPE, (2, 2, 2), (8, 8, 8))  # 216 voxels, predicted exactly
    b = _box(SHAPE, (25, 25, 25), (31, 31, 31))  # 216 voxels, missed
    small = _box(SHAPE, (2, 30, 2), (5, 33, 5))  # 27 voxels <= 50: left out although missed
    fp = _box(SHAPE, (30, 2, 30), (34, 6, 34))  # far from every lesion
    s = lesion_scores(a | fp, a | b | small)
    assert (s.lesions, s.detected, s.false_positives) == (2, 1, 1)
    assert s.dice == pytest.approx((1 + 0 + 0) / 3)
    assert s.hd95 == pytest.approx((0 + 374 + 374) / 3)


def test_partial_overlap_dice_and_components_merged_by_dilation():
    a = _box(SHAPE, (5, 5, 5), (10, 10, 10))  # 125 voxels
    b = _box(SHAPE, (5, 5, 12), (10, 10, 17))  # 125 voxels, 2 voxels from a: one lesion after dilation
    s = lesion_scores(a, a | b)
    assert (s.lesions, s.detected, s.false_positives) == (1, 1, 0)
    assert s.dice == pytest.approx(2 * 125 / (125 + 250))
    apart = lesion_scores(a, a | b, settings=LesionSettings(dilation=0))  # no merging: two lesions, one missed
    assert apart.lesions == 2 and apart.dice == pytest.approx((1 + 0) / 2)


def test_a_prediction_near_but_outside_a_lesion_is_a_match_not_a_false_positive():
    lesion = _box(SHAPE, (10, 10, 10), (16, 16, 16))
    near = _box(SHAPE, (10, 10, 18), (16, 16, 20))  # 2 voxels away: inside the 3-fold dilation
    s = lesion_scores(near, lesion)
    assert (s.detected, s.false_positives) == (1, 0) and s.dice == 0.0
    # every reference surface voxel is 2..7 voxels from the prediction; the HD95 is finite and below 374
    assert 2.0 <= s.hd95 < 10.0


def test_a_satellite_inside_the_dilation_belongs_to_its_lesion():
    main = _box(SHAPE, (10, 10, 10), (16, 16, 16))  # 216 voxels
    satellite = _box(SHAPE, (10, 10, 18), (12, 12, 20))  # 8 voxels, 2 voxels from the main lesion
    s = lesion_scores(main, main | satellite)
    assert (s.lesions, s.detected, s.false_positives) == (1, 1, 0)
    assert s.dice == pytest.approx(2 * 216 / (216 + 224))  # the missed satellite counts against the one lesion
    apart = lesion_scores(main, main | satellite, settings=LesionSettings(dilation=0))
    assert (apart.lesions, apart.dice) == (1, 1.0)  # unmerged, the 8 mm^3 satellite is under 50 mm^3: left out


def test_one_predicted_component_over_two_lesions_is_matched_to_both():
    a = _box(SHAPE, (5, 5, 5), (10, 10, 10))  # 125 voxels
    b = _box(SHAPE, (5, 5, 25), (10, 10, 30))  # 125 voxels, 15 voxels away: two lesions
    bridge = _box(SHAPE, (7, 7, 10), (8, 8, 25))  # 15 voxels joining them into one predicted component
    pred = a | b | bridge
    s = lesion_scores(pred, a | b)
    assert (s.lesions, s.detected, s.false_positives) == (2, 2, 0)
    each = 2 * 125 / (125 + 265)  # each lesion against the whole component it touches (265 voxels)
    assert s.dice == pytest.approx(each)
    per_lesion = float(hd95(torch.from_numpy(pred)[None, None], torch.from_numpy(a)[None], convention="brats2023"))
    assert 0 < per_lesion < 374 and s.hd95 == pytest.approx(per_lesion)  # the challenge's HD95, both alike


def test_empty_cases():
    empty = np.zeros(SHAPE, dtype=bool)
    both = lesion_scores(empty, empty)
    assert (both.dice, both.hd95) == (1.0, 0.0)
    only_pred = lesion_scores(_box(SHAPE, (1, 1, 1), (4, 4, 4)), empty)
    assert (only_pred.dice, only_pred.hd95, only_pred.false_positives) == (0.0, 374.0, 1)


def test_spacing_scales_the_volume_threshold():
    lesion = _box(SHAPE, (5, 5, 5), (9, 9, 9))  # 64 voxels
    assert lesion_scores(np.zeros(SHAPE, bool), lesion).lesions == 1  # 64 mm^3 > 50
    assert lesion_scores(np.zeros(SHAPE, bool), lesion, spacing=(0.5, 0.5, 0.5)).lesions == 0  # 8 mm^3


def test_batched_form_matches_per_mask_calls():
    rng = np.random.default_rng(0)
    ref = torch.from_numpy(np.stack([_box(SHAPE, (5, 5, 5), (15, 15, 15)), _box(SHAPE, (20, 20, 20), (30, 30, 30))]))
    pred = torch.from_numpy(rng.random((2, 2, *SHAPE)) > 0.999) | ref[None]
    dice, hd = lesion_metrics(pred, ref)
    for c in range(2):
        for r in range(2):
            s = lesion_scores(pred[c, r].numpy(), ref[r].numpy())
            assert (dice[c, r], hd[c, r]) == (s.dice, s.hd95)
    assert dice.max() < 1.0  # the scattered extra voxels are false positives


@pytest.mark.slow
def test_eval_lesion_metrics_flag_adds_them_to_the_report_files(tiny_cache, tmp_path):
    import csv
    import json

    from conftest import fast_config
    from prism.engine.trainer import Trainer
    from prism.evaluation.results import EvalReport

    for flag in (False, True):
        trainer = Trainer(fast_config("train.steps=1", f"eval.lesion_metrics={str(flag).lower()}", cache=tiny_cache),
                          tmp_path / str(flag), cache_path=tiny_cache)
        trainer.fit()
        report = trainer.evaluate()
        trainer.close()
        data = json.loads((tmp_path / str(flag) / "eval.json").read_text())
        assert ("lesion_dice" in data["metrics"]) is flag and ("lesion_hd95" in data["mean"]) is flag
        assert data["settings"]["lesion_convention"] == ("brats2023" if flag else None)
        assert data["settings"]["hd95_convention"] == "monai"
        with open(tmp_path / str(flag) / "eval_cases.csv", newline="") as fh:
            header = next(csv.reader(fh))
        assert ("WT_lesion_dice" in header and "ET_lesion_hd95_mm" in header) is flag
    assert report.lesion_dice.shape == report.dice.shape
    assert np.all((report.lesion_dice >= 0) & (report.lesion_dice <= 1))
    assert np.all((report.lesion_hd95 >= 0) & (report.lesion_hd95 <= 374))
    back = EvalReport.from_dict(json.loads((tmp_path / "True" / "eval.json").read_text()))
    assert np.allclose(back.lesion_dice, report.lesion_dice, atol=1e-6)
    assert "Lesion-wise metrics (BraTS 2023 challenge definition" in (tmp_path / "True" / "eval.md").read_text()
