"""Paired differences between two arms over seeds and cases, with a hierarchical (two-level) bootstrap.

The quantity compared is the study's headline metric: for one run, the mean over cases of each (combination,
region), then the mean over the combinations (NaN entries left out at both levels). For two arms A (the
reference) and B, evaluated on the same test cases with the same seeds:

* point estimate: the mean over seeds s of ``metric(B_s) - metric(A_s)`` (paired by seed);
* per-seed differences: ``metric(B_s) - metric(A_s)``; "seeds agreeing" counts those with the point estimate's sign;
* interval: ``samples`` bootstrap iterations; each draws S seeds with replacement from the S paired seeds, and
  N cases with replacement from the N cases, and recomputes the point estimate on that draw (each drawn seed
  weighted by how often it was drawn, each case likewise). The same case draw is used for every drawn seed of an
  iteration, because every run is scored on the same cases (seeds and cases are crossed factors: the
  "pigeonhole" bootstrap of Owen, 2007). The interval is the (1-c)/2 and (1+c)/2 quantiles of the draws.

Resampling seeds puts the seed-to-seed variance (a collapsed or lucky seed) into the interval, which resampling the
cases of one pair of runs cannot do; with one seed it reduces to the ordinary paired case bootstrap.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np


def run_metric(values: np.ndarray) -> np.ndarray:
    """``[regions]``: mean over combinations of the mean over cases, from ``values [cases, combinations, regions]``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        return np.nanmean(np.nanmean(values, axis=0), axis=0)


def _weighted_metric(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``[B, regions]``: :func:`run_metric` under case weights ``[B, cases]`` (bootstrap counts)."""
    n, c, r = values.shape
    valid = ~np.isnan(values)
    flat = np.where(valid, values, 0.0).reshape(n, c * r)
    sums = weights @ flat
    counts = weights @ valid.reshape(n, c * r).astype(np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        per_combination = (sums / counts).reshape(-1, c, r)  # NaN where no drawn case scored the combination
        return np.nanmean(per_combination, axis=1)


def bootstrap_draws(reference: np.ndarray, other: np.ndarray, *, samples: int = 10000, seed: int = 0,
                    chunk: int = 2000) -> np.ndarray:
    """Bootstrap draws of the paired difference ``other - reference`` (see the module docstring).

    Args:
        reference, other: float ``[seeds, cases, combinations, regions]``, seed ``s`` of one paired with seed
            ``s`` of the other, the same cases in the same order.
        samples: bootstrap iterations.
        seed: the generator's seed (the draws are reproducible).

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
        seed_w = np.stack([np.bincount(rng.integers(0, s, s), minlength=s) for _ in range(b)]).astype(np.float64)
        case_w = np.stack([np.bincount(rng.integers(0, n, n), minlength=n) for _ in range(b)]).astype(np.float64)
        per_seed = np.stack([_weighted_metric(other[i], case_w) - _weighted_metric(reference[i], case_w)
                             for i in range(s)], axis=1)  # [b, seeds, regions]
        out.append(np.einsum("bs,bsr->br", seed_w, per_seed) / s)
    return np.concatenate(out) if out else np.zeros((0, reference.shape[3]))


@dataclass
class PairedDifference:
    """``other - reference`` per region: point estimate, interval, per-seed values and sign agreement."""

    estimate: np.ndarray  # [regions]
    low: np.ndarray
    high: np.ndarray
    per_seed: np.ndarray  # [seeds, regions]
    agree: np.ndarray  # [regions] int: seeds whose difference has the estimate's sign
    seeds: int
    cases: int


def paired_difference(reference: np.ndarray, other: np.ndarray, *, samples: int = 10000, confidence: float = 0.95,
                      seed: int = 0) -> PairedDifference:
    """Point estimate, hierarchical-bootstrap interval and sign agreement of ``other - reference``.

    Args:
        reference, other: float ``[seeds, cases, combinations, regions]`` (see :func:`bootstrap_draws`).
        confidence: interval level in (0, 1).

    Returns:
        A :class:`PairedDifference`; the interval is the percentile interval of the draws (NaN where no draw has
        a value).
    """
    per_seed = np.stack([run_metric(o) - run_metric(r) for r, o in zip(reference, other, strict=True)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        estimate = np.nanmean(per_seed, axis=0)
        draws = bootstrap_draws(reference, other, samples=samples, seed=seed)
        alpha = (1 - confidence) / 2
        low = np.nanquantile(draws, alpha, axis=0)
        high = np.nanquantile(draws, 1 - alpha, axis=0)
    agree = (np.sign(per_seed) == np.sign(estimate)[None]).sum(axis=0)
    return PairedDifference(estimate=estimate, low=low, high=high, per_seed=per_seed, agree=agree,
                            seeds=reference.shape[0], cases=reference.shape[1])
