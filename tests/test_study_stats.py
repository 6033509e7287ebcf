"""The study's comparison: a t-interval over per-seed differences, calibrated on simulated studies with no true
difference, with the power the paired-t formula predicts, and the within-seed bootstrap against an enumeration."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import stats

from prism.study.stats import (
    TOO_FEW,
    detectable_effect,
    paired_difference,
    power,
    seeds_needed,
    verdict,
    within_seed_draws,
)

CASES, COMBOS, REGIONS = 20, 15, 3
SEED_SD, NOISE_SD, CASE_SD = 3.0, 5.0, 10.0


def simulate(rng: np.random.Generator, seeds: int, effect: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """One study, two arms ``[seeds, cases, combinations, regions]`` (points): a case x combination effect shared
    by every run (the same test set), a per-run offset (seed-to-seed variation, sd 3), per-run noise on every
    entry (sd 5), and ``effect`` added to the second arm."""
    shared = rng.normal(60.0, CASE_SD, (1, CASES, COMBOS, REGIONS))
    runs = [shared + rng.normal(0, SEED_SD, (seeds, 1, 1, REGIONS)) + rng.normal(0, NOISE_SD, (seeds, CASES, COMBOS,
                                                                                                REGIONS))
            for _ in range(2)]
    return runs[0], runs[1] + effect


def per_seed_sd() -> float:
    """sd of one seed's paired difference: two run offsets and two runs' noise averaged over the entries."""
    return math.sqrt(2 * SEED_SD**2 + 2 * NOISE_SD**2 / (CASES * COMBOS))


def excluding_zero(seeds: int, studies: int, effect: float, seed: int) -> float:
    rng = np.random.default_rng(seed)
    hits = total = 0
    for _ in range(studies):
        d = paired_difference(*simulate(rng, seeds, effect), samples=0)
        hits += int(((d.low > 0) | (d.high < 0)).sum())
        total += REGIONS
    return hits / total


@pytest.mark.parametrize("seeds", [2, 3, 5, 8])
def test_null_studies_exclude_zero_in_about_five_percent(seeds):
    rate = excluding_zero(seeds, studies=2000, effect=0.0, seed=seeds)  # 6000 intervals per seed count
    assert rate <= 0.07, rate
    assert rate >= 0.03, rate  # not conservative to the point of never seeing anything


def test_power_with_a_true_effect_follows_the_paired_t_formula():
    seeds, effect = 5, 5.0
    sd = per_seed_sd()
    df, crit = seeds - 1, stats.t.ppf(0.975, seeds - 1)
    nc = effect * math.sqrt(seeds) / sd
    formula = stats.nct.sf(crit, df, nc) + stats.nct.cdf(-crit, df, nc)
    assert 0.3 < formula < 0.8  # a power where the comparison is informative
    simulated = excluding_zero(seeds, studies=2000, effect=effect, seed=11)
    assert simulated == pytest.approx(formula, abs=0.03)
    assert power(effect, sd, seeds) == pytest.approx(formula, rel=1e-9)


def test_seeds_needed_and_detectable_effect_invert_the_power():
    sd = 2.0
    n = seeds_needed(3.0, sd)
    assert power(3.0, sd, n) >= 0.8 > power(3.0, sd, n - 1)
    effect = detectable_effect(sd, 8)
    assert power(effect, sd, 8) == pytest.approx(0.8, abs=1e-6)
    assert detectable_effect(sd, 4) > effect  # fewer seeds, larger detectable effect
    assert math.isnan(detectable_effect(sd, 1)) and seeds_needed(0.01, 100.0, limit=10) is None


def test_t_interval_by_formula_and_the_verdicts():
    shift = np.array([2.0, 3.0, 1.0, 2.0])  # per-seed differences: mean 2, sd sqrt(2/3)
    ref = np.random.default_rng(0).uniform(40, 60, (4, 6, 15, 1))
    d = paired_difference(ref, ref + shift[:, None, None, None], samples=0)
    half = 3.182446 * math.sqrt(2 / 3) / math.sqrt(4)  # t(0.975, 3 df) from the table
    assert d.estimate[0] == pytest.approx(2.0) and d.sd[0] == pytest.approx(math.sqrt(2 / 3))
    assert (d.low[0], d.high[0]) == pytest.approx((2.0 - half, 2.0 + half), abs=1e-5)
    assert d.verdicts == ["better"]
    hd = paired_difference(ref, ref + shift[:, None, None, None], samples=0, higher_is_better=False)
    assert hd.verdicts == ["worse"]  # a larger HD95 is worse
    two = paired_difference(ref[:2], ref[:2] + np.array([5.0, 5.1])[:, None, None, None], samples=0)
    assert two.low[0] > 0 and two.verdicts == [TOO_FEW]  # an interval excluding 0 is no verdict with 2 seeds
    assert verdict(-1.0, 2.0, 5) == "no difference shown" and verdict(0.5, 2.0, 3) == "better"
    one = paired_difference(ref[:1], ref[:1] + 1.0, samples=0)
    assert math.isnan(one.low[0]) and one.verdicts == [TOO_FEW]


def _metric_by_hand(values, seeds, cases):
    """Mean over combinations of the mean over the drawn cases (NaN left out), averaged over ``seeds``."""
    out = []
    for s in seeds:
        combos = []
        for c in range(values.shape[2]):
            vals = [values[s, n, c, 0] for n in cases if not math.isnan(values[s, n, c, 0])]
            if vals:
                combos.append(sum(vals) / len(vals))
        out.append(sum(combos) / len(combos))
    return sum(out) / len(out)


def test_within_seed_bootstrap_matches_the_exact_enumeration_of_case_draws():
    rng = np.random.default_rng(5)
    ref = rng.uniform(0.3, 0.8, (2, 3, 2, 1))
    other = ref + np.array([0.10, -0.02])[:, None, None, None] + rng.normal(0, 0.05, (2, 3, 2, 1))
    ref[0, 1, 1, 0] = other[0, 1, 1, 0] = np.nan  # a case not scored on one combination
    # the seeds stay as they are; every equally likely case draw: 3^3 ordered draws, shared by both seeds
    exact = np.array([_metric_by_hand(other, (0, 1), n) - _metric_by_hand(ref, (0, 1), n)
                      for n in itertools.product(range(3), repeat=3)])
    draws = within_seed_draws(ref, other, samples=40000, seed=1)[:, 0]
    assert abs(draws.mean() - exact.mean()) < 0.002
    for v in np.unique(exact):  # the empirical CDF follows the exact one at every atom
        assert abs((draws <= v + 1e-12).mean() - (exact <= v + 1e-12).mean()) < 0.012
    d = paired_difference(ref, other, samples=4000, seed=1)
    assert d.within_low[0] == pytest.approx(np.quantile(exact, 0.025), abs=0.02)


def test_the_within_seed_interval_ignores_seed_to_seed_spread():
    rng = np.random.default_rng(0)
    ref = rng.uniform(40, 60, (4, 10, 3, 2))
    shift = np.array([20.0, 15.0, 25.0, -30.0])  # the seeds disagree; every case moves alike within a seed
    d = paired_difference(ref, ref + shift[:, None, None, None], samples=500)
    assert np.allclose(d.within_low, shift.mean()) and np.allclose(d.within_high, shift.mean())
    assert d.low[0] < 0 < d.high[0] and d.verdicts[0] == "no difference shown"


# ---- cross-validation folds: the seed stays the replicate ------------------------------------------------------------

def simulate_folds(rng: np.random.Generator, seeds: int, folds: int) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """A study with no true difference, two arms ``[seeds * folds, cases, combinations, regions]`` and each run's
    seed: as :func:`simulate`, with each seed's offset shared by all its folds (one initialisation, overlapping
    training sets) and a smaller per-fold offset (sd 1)."""
    shared = rng.normal(60.0, CASE_SD, (1, 1, CASES, COMBOS, REGIONS))
    runs = []
    for _ in range(2):
        run = (shared + rng.normal(0, SEED_SD, (seeds, 1, 1, 1, REGIONS)) + rng.normal(0, 1.0, (seeds, folds, 1, 1,
                                                                                                 REGIONS))
               + rng.normal(0, NOISE_SD, (seeds, folds, CASES, COMBOS, REGIONS)))
        runs.append(run.reshape(seeds * folds, CASES, COMBOS, REGIONS))
    return runs[0], runs[1], [s for s in range(seeds) for _ in range(folds)]


def test_folds_of_one_seed_are_not_replicates_the_grouped_interval_keeps_its_level():
    rng = np.random.default_rng(11)
    grouped = as_units = total = 0
    for _ in range(1500):
        ref, other, groups = simulate_folds(rng, seeds=3, folds=3)
        g = paired_difference(ref, other, samples=0, groups=groups)
        u = paired_difference(ref, other, samples=0)  # each (seed, fold) run counted as a replicate
        grouped += int(((g.low > 0) | (g.high < 0)).sum())
        as_units += int(((u.low > 0) | (u.high < 0)).sum())
        total += REGIONS
    assert 0.03 <= grouped / total <= 0.07, grouped / total
    assert as_units / total > 0.15, as_units / total  # the correlated folds make that interval far too narrow


def test_grouped_folds_average_per_seed_and_copies_of_a_seed_add_no_evidence():
    rng = np.random.default_rng(2)
    ref = rng.uniform(40, 60, (3, 6, 15, 2))
    other = ref + rng.normal(2.0, 3.0, (3, 1, 1, 2)) + rng.normal(0, 1.0, ref.shape)
    seeds_alone = paired_difference(ref, other, samples=200, seed=4)
    copies = paired_difference(np.repeat(ref, 4, axis=0), np.repeat(other, 4, axis=0), samples=200, seed=4,
                               groups=[s for s in range(3) for _ in range(4)])
    for field in ("estimate", "low", "high", "sd", "per_seed", "within_low", "within_high"):
        assert np.allclose(getattr(copies, field), getattr(seeds_alone, field)), field
    assert copies.seeds == 3 and copies.per_unit.shape == (12, 2) and copies.verdicts == seeds_alone.verdicts
    # different folds: a seed's difference is the mean of its folds' differences, in order of first appearance
    d = paired_difference(ref[[0, 1, 2]], other[[0, 1, 2]], samples=0, groups=[7, 5, 7])
    by_run = [np.mean(np.nanmean(o - r, axis=0), axis=0) for r, o in zip(ref, other, strict=True)]
    assert np.allclose(d.per_seed, [(by_run[0] + by_run[2]) / 2, by_run[1]]) and d.seeds == 2
    with pytest.raises(ValueError, match="one group per unit"):
        paired_difference(ref, other, samples=0, groups=[0, 1])
