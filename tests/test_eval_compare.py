"""prism-eval compare: paired bootstrap over cases; the CLI on two tiny runs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import FAST
from prism.cli import evaluate as eval_cli
from prism.cli import train as train_cli
from prism.errors import DataError
from prism.evaluation.compare import bootstrap_ci, compare_reports
from prism.evaluation.results import EvalReport


def _report(dice: np.ndarray, hd: np.ndarray | None = None, cases: list[str] | None = None) -> EvalReport:
    n = dice.shape[0]
    return EvalReport(modalities=("a", "b"), regions=("WT", "TC"), combinations=["A", "B", "A+B"],
                      case_ids=cases or [f"c{i}" for i in range(n)], dice=dice, hd95=hd)


def test_bootstrap_ci_by_hand():
    assert bootstrap_ci(np.full(7, 2.5), samples=200) == (2.5, 2.5)  # no spread, no interval
    values = np.array([0.0, 1.0])
    lo, hi = bootstrap_ci(values, samples=20000, seed=3)
    # resampled means of two cases are 0, 0.5 or 1 with probabilities 1/4, 1/2, 1/4
    assert lo == 0.0 and hi == 1.0
    assert bootstrap_ci(values, samples=500, seed=1) == bootstrap_ci(values, samples=500, seed=1)
    lo, hi = bootstrap_ci(np.array([1.0, 2.0, 3.0, np.nan]), samples=4000, seed=0)
    assert 1.0 <= lo < 2.0 < hi <= 3.0


def test_compare_reports_pairs_cases_and_averages_combinations():
    rng = np.random.default_rng(0)
    a_dice = rng.uniform(0.5, 0.9, size=(5, 3, 2))
    b_dice = a_dice + np.array([0.05, -0.02])  # B is better on WT by 5 points, worse on TC by 2, for every case
    hd_a = rng.uniform(2, 10, size=(5, 3, 2))
    hd_b = hd_a - 1.0
    hd_b[0, 0, 0] = np.nan  # left out of that case's mean over combinations
    a = _report(a_dice, hd_a)
    b = _report(b_dice[::-1].copy(), hd_b[::-1].copy(), cases=[f"c{i}" for i in reversed(range(5))])
    diffs = {(d.metric, d.region): d for d in compare_reports(a, b, samples=500)}
    wt, tc = diffs["dice", "WT"], diffs["dice", "TC"]
    assert wt.diff == pytest.approx(5.0) and wt.ci_low == pytest.approx(5.0) and wt.ci_high == pytest.approx(5.0)
    assert tc.diff == pytest.approx(-2.0) and wt.cases == 5
    assert wt.mean_a == pytest.approx(a_dice[..., 0].mean() * 100)
    hd = diffs["hd95", "WT"]
    case0_b = np.nanmean(hd_b[0, :, 0])
    expected = (np.sum(hd_b[1:, :, 0].mean(1) - hd_a[1:, :, 0].mean(1)) + case0_b - hd_a[0, :, 0].mean()) / 5
    assert hd.diff == pytest.approx(expected)
    per_combo = compare_reports(a, b, samples=100, per_combination=True)
    assert len(per_combo) == 2 * 2 * (1 + 3)
    with pytest.raises(DataError, match="no case in common"):
        compare_reports(a, _report(b_dice, cases=[f"x{i}" for i in range(5)]))


def test_compare_cli_on_two_tiny_runs(capsys, tiny_cache, tmp_path):
    run_a, run_b = tmp_path / "a", tmp_path / "b"
    assert train_cli.main(["--data", str(tiny_cache), "-o", str(run_a), *FAST, "train.steps=2"]) == 0
    assert train_cli.main(["--data", str(tiny_cache), "-o", str(run_b), *FAST, "train.steps=4", "--no-eval"]) == 0
    capsys.readouterr()
    code = eval_cli.main([str(run_b), "--window", "16", "16", "16", "--overlap", "0.25", "--et-postprocess", "3",
                          "--adapt-site", "site0", "--adapt-steps", "1", "--no-heatmap"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "fast adaptation to 'site0'" in out
    data_b = json.loads((run_b / "eval.json").read_text())
    assert data_b["settings"]["window"] == [16, 16, 16] and data_b["settings"]["et_postprocess_voxels"] == 3
    assert data_b["adaptation"]["steps"] == 1 and not (run_b / "eval_dice.png").exists()
    assert (run_a / "eval_dice.png").is_file() and (run_a / "eval_cases.csv").is_file()

    assert eval_cli.main(["compare", str(run_a), str(run_b), "--samples", "300", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    rows = {(d["metric"], d["region"]): d for d in result["differences"]}
    assert set(rows) == {(m, r) for m in ("dice", "hd95") for r in ("WT", "TC", "ET")}
    a, b = (EvalReport.from_dict(json.loads((r / "eval.json").read_text())) for r in (run_a, run_b))
    expected = (b.dice[..., 0].mean(1) - a.dice[..., 0].mean(1)).mean() * 100
    assert rows["dice", "WT"]["diff"] == pytest.approx(expected)
    assert rows["dice", "WT"]["ci_low"] <= rows["dice", "WT"]["diff"] <= rows["dice", "WT"]["ci_high"]

    assert eval_cli.main(["compare", str(run_a), str(run_b), "--samples", "300"]) == 0
    out = capsys.readouterr().out
    assert "B - A" in out and "HD95 (mm)" in out and "different settings" in out

    assert eval_cli.main(["compare", str(run_a), str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("prism-eval: error: ") and "no evaluation report" in err and "\n" not in err
