"""Paired differences between two arms over seeds: a t-interval over the per-seed differences, the rule that turns
it into a verdict, and the number of seeds a given effect needs.

The quantity compared is each run's headline metric,
:func:`~prism.evaluation.results.combination_mean` (for each combination the mean over cases, then the mean over
combinations, NaN entries left out). For two arms A (the reference) and B, evaluated on the same test cases with
the same seeds:

* per-seed difference ``d_s = metric(B_s) - metric(A_s)`` (each seed's difference averaged over cases and
  combinations); point estimate: their mean;
* interval: Student's t over seeds, ``mean(d) +- t_{S-1, (1+c)/2} * sd(d) / sqrt(S)``. The seeds are the units
  that vary between replications of a study; the t quantile with S - 1 degrees of freedom is what a handful of
  seeds needs (a bootstrap over S seeds has (S-1)/S of the variance and normal-like quantiles, and its 95%
  intervals exclude 0 in 10-40% of studies with no true difference at 8 down to 2 seeds);
* verdict: with fewer than :data:`MIN_SEEDS` seeds, "too few seeds to conclude", whatever the interval; else the
  arm is better or worse when the interval excludes 0, and no difference is shown when it does not;
* within-seed interval: a bootstrap over the test cases with the seeds held fixed (one case draw shared by every
  seed, since every run is scored on the same cases). It shows how much the test set alone moves the estimate and
  is reported beside the t-interval, never as evidence of a difference between methods.

With cross-validation folds (a spec's ``folds``) every seed has one run per fold, and the replicate is still the
seed: the folds of one seed are not independent replicates (their training sets overlap, and every fold's run is
scored on the same test cases), so treating each (seed, fold) pair as a unit would shrink the interval by up to
about ``sqrt(K)`` (when a seed's folds move together) without new evidence (Bengio and Grandvalet 2004, "No
unbiased estimator of the variance of K-fold cross-validation", JMLR 5: the fold-to-fold covariances cannot be
estimated from one cross-validation; Dietterich 1998, "Approximate statistical tests for comparing supervised
classification learning algorithms", Neural Computation 10(7): the 10-fold cross-validated paired t-test rejects a
true null more often than its level). The functions below take the (seed, fold) runs along their first axis with
``groups`` naming each one's seed: a seed's difference ``d_s`` is the mean over its folds of the per-run
differences (the cross-validated difference of that seed), and the interval, sd, verdict and power are over those
S per-seed differences.

Power: with per-seed differences of sd ``sigma``, a two-sided paired t-test at level ``1 - c`` with S seeds detects
an effect ``delta`` with probability ``P(|T| > t_crit)`` where T is noncentral t with S - 1 degrees of freedom and
noncentrality ``delta * sqrt(S) / sigma`` (:func:`power`); :func:`seeds_needed` inverts it.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

from ..evaluation.results import combination_mean

#: fewer seeds than this: no verdict, whatever the interval
MIN_SEEDS = 3
TOO_FEW = "too few seeds to conclude"


def run_metric(values: np.ndarray) -> np.ndarray:
    """``[regions]``: a run's headline metric from ``values [cases, combinations, regions]``
    (:func:`~prism.evaluation.results.combination_mean`)."""
    return combination_mean(values)


def per_seed_differences(reference: np.ndarray, other: np.ndarray) -> np.ndarray:
    """``[seeds, regions]``: ``run_metric(other_s) - run_metric(reference_s)`` for each paired seed ``s``.

    Args:
        reference, other: float ``[seeds, cases, combinations, regions]``, seed ``s`` of one paired with seed ``s``
            of the other, the same cases in the same order.
    """
    if reference.shape != other.shape or reference.ndim != 4:
        raise ValueError(f"need two [seeds, cases, combinations, regions] arrays of one shape, got "
                         f"{reference.shape} and {other.shape}")
    return np.stack([run_metric(o) - run_metric(r) for r, o in zip(reference, other, strict=True)])


def group_indices(groups: Sequence[Hashable] | None, units: int) -> list[np.ndarray]:
    """The positions of each group's units, groups in order of first appearance (no groups: one unit each).

    Raises:
        ValueError: ``groups`` does not name one group per unit.
    """
    if groups is None:
        return [np.array([i]) for i in range(units)]
    groups = list(groups)
    if len(groups) != units:
        raise ValueError(f"need one group per unit, got {len(groups)} groups for {units} units")
    order = list(dict.fromkeys(groups))
    return [np.array([i for i, g in enumerate(groups) if g == key]) for key in order]


def group_means(per_unit: np.ndarray, groups: Sequence[Hashable] | None) -> np.ndarray:
    """``[groups, ...]``: the mean of each group's rows of ``per_unit [units, ...]`` (NaN rows left out; no groups:
    ``per_unit`` itself)."""
    if groups is None:
        return per_unit
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        return np.stack([np.nanmean(per_unit[idx], axis=0) for idx in group_indices(groups, len(per_unit))])


def t_interval(per_seed: np.ndarray, confidence: float = 0.95) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                                         np.ndarray]:
    """Mean, t-interval and sd over seeds of per-seed differences ``[seeds, regions]`` (NaN seeds left out).

    Returns:
        ``(estimate, low, high, sd)``, each ``[regions]``; the interval and sd are NaN with fewer than two seeds.
    """
    per_seed = np.asarray(per_seed, dtype=np.float64)
    out = [np.full(per_seed.shape[1], np.nan) for _ in range(4)]
    for r in range(per_seed.shape[1]):
        d = per_seed[:, r][~np.isnan(per_seed[:, r])]
        if d.size == 0:
            continue
        out[0][r] = d.mean()
        if d.size < 2:
            continue
        sd = float(d.std(ddof=1))
        half = stats.t.ppf((1 + confidence) / 2, d.size - 1) * sd / math.sqrt(d.size)
        out[1][r], out[2][r], out[3][r] = d.mean() - half, d.mean() + half, sd
    return out[0], out[1], out[2], out[3]


def within_seed_draws(reference: np.ndarray, other: np.ndarray, *, samples: int = 10000, seed: int = 0,
                      chunk: int = 1000, groups: Sequence[Hashable] | None = None) -> np.ndarray:
    """Bootstrap draws of the mean per-seed difference with the seeds held fixed and the cases resampled.

    Each draw takes N cases with replacement (one draw shared by every seed) and recomputes every seed's difference
    under those case weights, then their mean over seeds.

    Args:
        reference, other: float ``[units, cases, combinations, regions]`` (see :func:`per_seed_differences`).
        samples: bootstrap iterations.
        seed: the generator's seed (the draws are reproducible).
        groups: each unit's seed when the units are (seed, fold) runs (None: every unit is a seed); a seed's
            difference is then the mean over its units.

    Returns:
        float ``[samples, regions]``.
    """
    if reference.shape != other.shape or reference.ndim != 4:
        raise ValueError(f"need two [seeds, cases, combinations, regions] arrays of one shape, got "
                         f"{reference.shape} and {other.shape}")
    s, n = reference.shape[:2]
    rng = np.random.default_rng(seed)
    out = []
    for start in range(0, samples, chunk):
        b = min(chunk, samples - start)
        weights = np.stack([np.bincount(rng.integers(0, n, n), minlength=n) for _ in range(b)]).astype(np.float64)
        diffs = [combination_mean(other[i], weights) - combination_mean(reference[i], weights) for i in range(s)]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=RuntimeWarning)
            per_unit = np.stack(diffs, axis=1)  # [draws, units, regions]
            if groups is not None:
                per_unit = np.stack([np.nanmean(per_unit[:, idx], axis=1) for idx in group_indices(groups, s)],
                                    axis=1)
            out.append(np.nanmean(per_unit, axis=1))
    return np.concatenate(out) if out else np.zeros((0, reference.shape[3]))


def power(effect: float, sd: float, seeds: int, confidence: float = 0.95) -> float:
    """Probability that the two-sided paired t-test over ``seeds`` per-seed differences of sd ``sd`` rejects "no
    difference" at level ``1 - confidence`` when the true difference is ``effect`` (noncentral t)."""
    if seeds < 2 or sd <= 0:
        return float("nan")
    df = seeds - 1
    crit = stats.t.ppf((1 + confidence) / 2, df)
    nc = effect * math.sqrt(seeds) / sd
    return float(stats.nct.sf(crit, df, nc) + stats.nct.cdf(-crit, df, nc))


def seeds_needed(effect: float, sd: float, *, target: float = 0.8, confidence: float = 0.95,
                 limit: int = 1000) -> int | None:
    """The fewest seeds (at least :data:`MIN_SEEDS`) whose paired t-test reaches ``target`` power for ``effect``;
    None when ``limit`` seeds do not."""
    for s in range(MIN_SEEDS, limit + 1):
        if power(effect, sd, s, confidence) >= target:
            return s
    return None


def detectable_effect(sd: float, seeds: int, *, target: float = 0.8, confidence: float = 0.95) -> float:
    """The smallest effect the paired t-test over ``seeds`` seeds detects with ``target`` power (NaN: not
    computable with fewer than 2 seeds or no spread)."""
    if seeds < 2 or not sd > 0 or not math.isfinite(sd):
        return float("nan")
    low, high = 0.0, sd
    while power(high, sd, seeds, confidence) < target:
        high *= 2
    for _ in range(60):
        mid = (low + high) / 2
        low, high = (mid, high) if power(mid, sd, seeds, confidence) < target else (low, mid)
    return high


def verdict(low: float, high: float, seeds: int, *, higher_is_better: bool = True) -> str:
    """The report's reading of one interval: too few seeds, better, worse, or no difference shown."""
    if seeds < MIN_SEEDS:
        return TOO_FEW
    if not (math.isfinite(low) and math.isfinite(high)):
        return "no interval"
    if low > 0 or high < 0:
        return "better" if (low > 0) == higher_is_better else "worse"
    return "no difference shown"


@dataclass
class PairedDifference:
    """``other - reference`` per region: point estimate, t-interval over seeds, verdict, and the within-seed
    (case bootstrap) interval."""

    estimate: np.ndarray  # [regions]
    low: np.ndarray  # t-interval over seeds
    high: np.ndarray
    sd: np.ndarray  # sd of the per-seed differences
    per_seed: np.ndarray  # [seeds, regions]
    within_low: np.ndarray  # bootstrap over cases, seeds fixed
    within_high: np.ndarray
    verdicts: list[str]
    seeds: int
    cases: int
    per_unit: np.ndarray | None = None  # [units, regions], with groups: each (seed, fold) run's difference


def paired_difference(reference: np.ndarray, other: np.ndarray, *, samples: int = 10000, confidence: float = 0.95,
                      seed: int = 0, higher_is_better: bool = True,
                      groups: Sequence[Hashable] | None = None) -> PairedDifference:
    """The comparison the study report prints (see the module docstring).

    Args:
        reference, other: float ``[units, cases, combinations, regions]`` (see :func:`per_seed_differences`); a
            unit is a seed, or a (seed, fold) run with ``groups``.
        samples: within-seed bootstrap iterations (0: none, the within-seed interval is NaN).
        confidence: interval level in (0, 1).
        seed: the within-seed bootstrap's seed.
        higher_is_better: the metric's direction (Dice True, HD95 False), for the verdict.
        groups: each unit's seed, with folds; the per-seed difference is the mean of its units' differences and
            everything over seeds (interval, sd, verdict, ``seeds``) counts the seeds, not the units.

    Returns:
        A :class:`PairedDifference`.
    """
    per_unit = per_seed_differences(reference, other)
    per_seed = group_means(per_unit, groups)
    estimate, low, high, sd = t_interval(per_seed, confidence)
    regions = reference.shape[3]
    within_low, within_high = np.full(regions, np.nan), np.full(regions, np.nan)
    if samples > 0 and reference.shape[1] > 1:
        draws = within_seed_draws(reference, other, samples=samples, seed=seed, groups=groups)
        alpha = (1 - confidence) / 2
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=RuntimeWarning)
            within_low, within_high = np.nanquantile(draws, alpha, axis=0), np.nanquantile(draws, 1 - alpha, axis=0)
    s = per_seed.shape[0]
    verdicts = [verdict(float(lo), float(hi), s, higher_is_better=higher_is_better) for lo, hi in zip(low, high,
                                                                                                    strict=True)]
    return PairedDifference(estimate=estimate, low=low, high=high, sd=sd, per_seed=per_seed, within_low=within_low,
                            within_high=within_high, verdicts=verdicts, seeds=s, cases=reference.shape[1],
                            per_unit=per_unit if groups is not None else None)
