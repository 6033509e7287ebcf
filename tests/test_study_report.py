"""The study report: hierarchical bootstrap against an exact enumeration, flags, and the files, from fake runs."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest

from prism.engine.metrics_log import CsvLog
from prism.evaluation.results import EvalReport
from prism.evaluation.writers import write_report
from prism.modalities import BRATS_MODALITIES, enumerate_combinations
from prism.study.report import write_study_report
from prism.study.runner import SPEC_NAME
from prism.study.spec import StudySpec, spec_to_yaml
from prism.study.stats import bootstrap_draws, paired_difference


def _metric_by_hand(values, seeds, cases):
    """Mean over combinations of the mean over the drawn cases (NaN left out), averaged over the drawn seeds."""
    out = []
    for s in seeds:
        combos = []
        for c in range(values.shape[2]):
            vals = [values[s, n, c, 0] for n in cases if not math.isnan(values[s, n, c, 0])]
            if vals:
                combos.append(sum(vals) / len(vals))
        out.append(sum(combos) / len(combos))
    return sum(out) / len(out)


def test_bootstrap_matches_exact_enumeration_of_seed_then_case_draws():
    rng = np.random.default_rng(5)
    ref = rng.uniform(0.3, 0.8, (2, 3, 2, 1))
    other = ref + np.array([0.10, -0.02])[:, None, None, None] + rng.normal(0, 0.05, (2, 3, 2, 1))
    ref[0, 1, 1, 0] = other[0, 1, 1, 0] = np.nan  # a case not scored on one combination
    # every equally likely outcome: 2^2 ordered seed draws x 3^3 ordered case draws (one case draw for all seeds)
    exact = np.array([_metric_by_hand(other, s, n) - _metric_by_hand(ref, s, n)
                      for s in itertools.product(range(2), repeat=2) for n in itertools.product(range(3), repeat=3)])
    draws = bootstrap_draws(ref, other, samples=40000, seed=1)[:, 0]
    assert abs(draws.mean() - exact.mean()) < 0.002
    for v in np.unique(exact):  # the empirical CDF follows the exact one at every atom
        assert abs((draws <= v + 1e-12).mean() - (exact <= v + 1e-12).mean()) < 0.012


def test_paired_difference_point_estimate_sign_agreement_and_seed_variance():
    rng = np.random.default_rng(0)
    ref = rng.uniform(0.4, 0.6, (4, 10, 3, 2))
    shift = np.array([0.2, 0.15, 0.25, -0.3])  # three seeds gain, one loses
    other = ref + shift[:, None, None, None]
    d = paired_difference(ref, other, samples=2000, confidence=0.95, seed=0)
    assert np.allclose(d.per_seed[:, 0], shift) and np.allclose(d.estimate, shift.mean())
    assert list(d.agree) == [3, 3]
    # the differences are identical for every case: a case-only bootstrap would give a zero-width interval;
    # resampling seeds gives the spread of the seed means
    assert d.low[0] < 0.0 < d.high[0]
    assert d.low[0] >= shift.min() - 1e-9 and d.high[0] <= shift.max() + 1e-9
    one = paired_difference(ref[:1], other[:1], samples=500, seed=0)  # one seed: case resampling only
    assert np.allclose(one.low, 0.2) and np.allclose(one.high, 0.2)


# ---- fake run folders in the format prism writes -----------------------------------------------------------

COMBOS = [c.name for c in enumerate_combinations(BRATS_MODALITIES)]
CASES = [f"case{i}" for i in range(4)]


def _fake_run(folder, dice, losses, hd=None):
    report = EvalReport(modalities=tuple(BRATS_MODALITIES), regions=("WT", "TC", "ET"), combinations=COMBOS,
                        case_ids=CASES, dice=dice, hd95=hd, sites=["site0"] * len(CASES))
    write_report(report, folder, heatmap=False)
    log = CsvLog(folder / "train_log.csv")
    for i, loss in enumerate(losses):
        log.write({"step": (i + 1) * 10, "lr": 0.01, "loss": loss, "fuse": loss})


def _spec(tmp_path, seeds=(0, 1, 2)):
    spec = StudySpec.model_validate({"name": "fake", "data": {"cache": str(tmp_path / "none.h5")},
                                     "arms": {"base": {}, "new": {}}, "seeds": list(seeds),
                                     "report": {"bootstrap_samples": 500}})
    (tmp_path / SPEC_NAME).write_text(spec_to_yaml(spec))
    return spec


def test_report_flags_collapsed_and_diverged_runs_and_leaves_them_out(tmp_path):
    _spec(tmp_path)
    rng = np.random.default_rng(1)
    good = [0.9, 0.6, 0.4, 0.3]
    values = {}
    for arm, base in (("base", 0.6), ("new", 0.7)):
        for seed in range(3):
            dice = np.clip(rng.normal(base, 0.05, (4, 15, 3)), 0, 1)
            hd = rng.uniform(2, 10, (4, 15, 3))
            values[(arm, seed)] = dice
            losses = good
            if (arm, seed) == ("new", 1):
                dice = np.zeros((4, 15, 3))  # constant background prediction
            if (arm, seed) == ("new", 2):
                losses = [0.9, 0.7, float("nan"), float("nan")]
            _fake_run(tmp_path / "runs" / arm / f"seed-{seed}", dice, losses, hd)
    summary = write_study_report(tmp_path)
    status = {(r["arm"], r["seed"]): r["status"] for r in summary["runs"]}
    assert status[("new", 1)] == "collapsed" and status[("new", 2)] == "diverged"
    assert sum(s == "ok" for s in status.values()) == 4
    new = summary["arms"]["new"]
    assert new["seeds_used"] == [0]
    expected = np.nanmean(np.nanmean(values[("new", 0)], axis=0), axis=0) * 100
    assert np.allclose(new["dice_mean"], expected, atol=1e-4)
    base = np.array([np.nanmean(np.nanmean(values[("base", s)], axis=0), axis=0) * 100 for s in range(3)])
    assert np.allclose(summary["arms"]["base"]["dice_mean"], base.mean(0), atol=1e-4)
    assert np.allclose(summary["arms"]["base"]["dice_sd"], base.std(0, ddof=1), atol=1e-4)
    diff = new["vs_reference"]["dice"]
    assert diff["seeds"] == [0]  # only the seed where both arms' runs are usable is paired
    assert np.allclose(diff["difference"], expected - base[0], atol=1e-4)
    md = (tmp_path / "report.md").read_text()
    assert "new/seed-1: collapsed" in md and "new/seed-2: diverged" in md
    for name in ("report.json", "report.csv", "dice_per_combination.png", "training_curves.png"):
        assert (tmp_path / name).stat().st_size > 0
    assert json.loads((tmp_path / "report.json").read_text())["reference"] == "base"
    rows = (tmp_path / "report.csv").read_text().splitlines()
    assert rows[0].startswith("arm,seed,status,region,dice") and len(rows) == 1 + 6 * 3


def test_report_flags_a_loss_stuck_near_its_start_with_nothing_learnt(tmp_path):
    _spec(tmp_path, seeds=(0, 1))
    rng = np.random.default_rng(2)
    for seed in (0, 1):
        _fake_run(tmp_path / "runs" / "base" / f"seed-{seed}", rng.uniform(0.3, 0.9, (4, 15, 3)),
                  [1.0, 0.7, 0.5, 0.4, 0.4, 0.3])
    stuck = [1.0, 0.99, 0.98, 0.99, 1.0, 0.98]
    _fake_run(tmp_path / "runs" / "new" / "seed-0", rng.uniform(0.0, 0.16, (4, 15, 3)), stuck)  # mean Dice ~8%
    _fake_run(tmp_path / "runs" / "new" / "seed-1", rng.uniform(0.3, 0.9, (4, 15, 3)), stuck)  # stuck but learnt
    summary = write_study_report(tmp_path)
    assert [r["status"] for r in summary["runs"]] == ["ok", "ok", "collapsed", "ok"]
    assert "stuck" in summary["runs"][2]["reason"]
    assert summary["arms"]["new"]["vs_reference"]["dice"]["seeds"] == [1]


def test_report_of_a_folder_that_is_not_a_study(tmp_path):
    from prism.errors import ConfigError

    with pytest.raises(ConfigError, match="not a study folder"):
        write_study_report(tmp_path)
