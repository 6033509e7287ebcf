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


def _bca_by_formula(values: np.ndarray, samples: int, confidence: float, seed: int,
                    statistic=lambda v: v.mean()) -> tuple[float, float]:
    """Efron's BCa interval of ``statistic`` over cases (axis 0), written from the formulas (independent of
    scipy's implementation)."""
    from statistics import NormalDist

    nd = NormalDist()
    rng = np.random.default_rng(seed)
    n = values.shape[0]
    means = np.array([statistic(values[idx]) for idx in rng.integers(0, n, size=(samples, n))])
    theta = statistic(values)
    z0 = nd.inv_cdf(float(np.mean(means < theta)))
    jack = np.array([statistic(np.delete(values, i, axis=0)) for i in range(n)])
    d = jack.mean() - jack
    a = (d**3).sum() / (6 * ((d**2).sum()) ** 1.5)
    out = []
    for alpha in ((1 - confidence) / 2, (1 + confidence) / 2):
        z = nd.inv_cdf(alpha)
        out.append(float(np.quantile(means, nd.cdf(z0 + (z0 + z) / (1 - a * (z0 + z))))))
    return out[0], out[1]


def test_bootstrap_ci_is_bca():
    assert bootstrap_ci(np.full(7, 2.5), samples=200) == (2.5, 2.5)  # no spread, no interval
    assert all(np.isnan(bootstrap_ci(np.array([1.0, np.nan]))))  # one value: no interval
    assert bootstrap_ci(np.arange(5.0), samples=500, seed=1) == bootstrap_ci(np.arange(5.0), samples=500, seed=1)
    skewed = np.random.default_rng(7).exponential(1.0, size=40)  # skew is where BCa differs from percentiles
    lo, hi = bootstrap_ci(skewed, samples=20000, seed=0)
    ref_lo, ref_hi = _bca_by_formula(skewed, 20000, 0.95, seed=11)
    assert abs(lo - ref_lo) < 0.03 and abs(hi - ref_hi) < 0.05
    pct_lo, pct_hi = np.percentile(skewed[np.random.default_rng(2).integers(0, 40, (20000, 40))].mean(1), [2.5, 97.5])
    assert hi - pct_hi > 0.01  # BCa shifts a right-skewed mean's interval to the right


def test_the_interval_of_the_combination_mean_is_bca_over_cases():
    from prism.evaluation.compare import bootstrap_mean_ci

    rng = np.random.default_rng(3)
    values = rng.exponential(2.0, size=(30, 3)) + np.array([0.0, 1.0, 3.0])
    values[rng.random((30, 3)) < 0.3] = np.nan  # cases that cannot supply a combination

    def by_hand(v):  # per combination the mean over the cases holding a value, then over the combinations
        return np.mean([np.mean(v[~np.isnan(v[:, c]), c]) for c in range(v.shape[1])])

    lo, hi = bootstrap_mean_ci(values, samples=6000, seed=0)
    ref_lo, ref_hi = _bca_by_formula(values, 6000, 0.95, seed=4, statistic=by_hand)
    assert abs(lo - ref_lo) < 0.08 and abs(hi - ref_hi) < 0.08
    assert lo < by_hand(values) < hi


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
    # the NaN entry is left out of both reports: every remaining pair differs by -1 mm
    assert hd.diff == pytest.approx(-1.0) and hd.ci_low == pytest.approx(-1.0)
    kept = hd_a[:, :, 0].copy()
    kept[0, 0] = np.nan
    by_hand = np.mean([np.nanmean(kept[:, c]) for c in range(3)])  # per combination over cases, then combinations
    assert hd.mean_a == pytest.approx(by_hand)
    per_combo = compare_reports(a, b, samples=100, per_combination=True)
    assert len(per_combo) == 2 * 2 * (1 + 3)
    with pytest.raises(DataError, match="no case in common"):
        compare_reports(a, _report(b_dice, cases=[f"x{i}" for i in range(5)]))


@pytest.mark.slow
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
    expected = (b.dice[..., 0].mean(0) - a.dice[..., 0].mean(0)).mean() * 100  # every case has every modality
    assert rows["dice", "WT"]["diff"] == pytest.approx(expected)
    assert rows["dice", "WT"]["ci_low"] <= rows["dice", "WT"]["diff"] <= rows["dice", "WT"]["ci_high"]

    assert eval_cli.main(["compare", str(run_a), str(run_b), "--samples", "300"]) == 0
    out = capsys.readouterr().out
    assert "B - A" in out and "HD95 (mm)" in out and "different settings" in out

    assert eval_cli.main(["compare", str(run_a), str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("prism-eval: error: ") and "no evaluation report" in err and "\n" not in err


def test_hd95_of_different_conventions_is_not_compared():
    rng = np.random.default_rng(1)
    dice, hd = rng.uniform(0.5, 0.9, (4, 3, 2)), rng.uniform(2, 10, (4, 3, 2))
    a, b = _report(dice, hd), _report(dice, hd + 1)
    assert {d.metric for d in compare_reports(a, b, samples=50)} == {"dice", "hd95"}
    b.settings["hd95_convention"] = "brats2023"
    assert {d.metric for d in compare_reports(a, b, samples=50)} == {"dice"}
    a.settings["hd95_convention"] = "brats2023"
    assert {d.metric for d in compare_reports(a, b, samples=50)} == {"dice", "hd95"}
