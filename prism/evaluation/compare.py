"""Compare two evaluation reports case by case: per-region differences with paired bootstrap confidence intervals.

Each report's value is its headline metric, :func:`~prism.evaluation.results.combination_mean` (the mean over the
combinations of each combination's mean over cases), the one average eval.md, eval.json and the study report
print, taken over the cases both reports hold and the (case, combination, region) entries both scored (NaN
entries left out: HD95 left out by convention, combinations a case lacks a modality for; an entry scored in only
one report is left out of both). The difference is B - A; its confidence interval comes from resampling the cases
with replacement and recomputing the same average (seeded, BCa: bias-corrected and accelerated,
``scipy.stats.bootstrap``). It covers case-to-case variation only, not seed-to-seed variation (``prism-study``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import stats

from ..errors import DataError
from .results import EvalReport, combination_mean
from .writers import JSON_NAME


@dataclass(frozen=True)
class Difference:
    """B - A for one metric and region (one combination, or the mean over combinations when ``combination`` is
    None): mean difference over cases and its bootstrap interval."""

    metric: str
    region: str
    combination: str | None
    mean_a: float
    mean_b: float
    diff: float
    ci_low: float
    ci_high: float
    cases: int


def load_report(path: Path) -> EvalReport:
    """The report of a run folder (its eval.json) or of an eval.json file."""
    path = Path(path)
    file = path / JSON_NAME if path.is_dir() else path
    if not file.is_file():
        raise DataError(f"{path}: no evaluation report ({JSON_NAME}); run prism-eval on it first")
    try:
        data = json.loads(file.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"{file}: not readable as JSON: {exc}") from None
    return EvalReport.from_dict(data, str(file))


def bootstrap_ci(values: np.ndarray, *, samples: int = 10000, confidence: float = 0.95, seed: int = 0
                 ) -> tuple[float, float]:
    """Bias-corrected and accelerated (BCa) bootstrap interval of the mean of ``values`` (one per case).

    Resamples cases with ``scipy.stats.bootstrap``: BCa corrects the percentile interval for the skew that
    Dice differences near 0 or 100 have. NaN values are left out.

    Args:
        values: ``[N]`` per-case values.
        samples: bootstrap resamples.
        confidence: the interval's coverage.
        seed: seeds the resampling (the same inputs give the same interval).

    Returns:
        ``(low, high)``; ``(v, v)`` when every value is ``v`` (up to rounding); NaNs when fewer than two values remain.
    """
    return bootstrap_mean_ci(np.asarray(values, dtype=np.float64)[:, None], samples=samples, confidence=confidence,
                             seed=seed)


def _case_weights(indices: np.ndarray, n: int) -> np.ndarray:
    """``[B, n]`` counts of each case in each row of drawn case indices ``[B, m]``."""
    rows = indices.reshape(-1, indices.shape[-1]).astype(np.intp)
    weights = np.zeros((rows.shape[0], n))
    np.add.at(weights, (np.arange(rows.shape[0])[:, None], rows), 1.0)
    return weights


def bootstrap_mean_ci(values: np.ndarray, *, samples: int = 10000, confidence: float = 0.95, seed: int = 0
                      ) -> tuple[float, float]:
    """BCa bootstrap interval of :func:`~prism.evaluation.results.combination_mean` of ``values``, resampling cases.

    Args:
        values: ``[cases, combinations]`` of one region (e.g. paired differences; NaN entries left out).
        samples, confidence, seed: as in :func:`bootstrap_ci`.

    Returns:
        ``(low, high)``; ``(v, v)`` when the statistic does not vary with the draw; NaNs with fewer than two cases
        holding a value.
    """
    values = np.asarray(values, dtype=np.float64)[:, :, None]
    keep = ~np.isnan(values).all(axis=(1, 2))
    values = values[keep]
    n = values.shape[0]
    if n < 2:
        return float("nan"), float("nan")
    estimate = float(combination_mean(values)[0])
    finite = values[~np.isnan(values)]
    if np.ptp(finite) <= 1e-9 * max(1.0, float(np.abs(finite).max())):  # one value everywhere: BCa is 0/0
        return estimate, estimate

    def statistic(indices: np.ndarray, axis: int = -1) -> np.ndarray:
        weights = _case_weights(np.moveaxis(indices, axis, -1), n)
        return combination_mean(values, weights)[:, 0].reshape(np.moveaxis(indices, axis, -1).shape[:-1])

    res = stats.bootstrap((np.arange(n),), statistic, n_resamples=samples, confidence_level=confidence,
                          method="BCa", rng=np.random.default_rng(seed), vectorized=True, batch=1000)
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def hd95_convention(report: EvalReport) -> str | None:
    """The HD95 convention a report used (None without HD95; reports that predate the setting used MONAI's)."""
    return None if report.hd95 is None else str(report.settings.get("hd95_convention") or "monai")


def compare_reports(a: EvalReport, b: EvalReport, *, samples: int = 10000, confidence: float = 0.95, seed: int = 0,
                    per_combination: bool = False) -> list[Difference]:
    """Per-region differences B - A (Dice in percentage points, HD95 in mm) over the cases both reports share.

    HD95 is compared only when both reports computed it under the same convention (``monai`` or ``brats2023``).
    """
    if a.regions != b.regions or a.combinations != b.combinations:
        raise DataError(f"the reports do not cover the same regions/combinations: {list(a.regions)} vs "
                        f"{list(b.regions)}, {len(a.combinations)} vs {len(b.combinations)} combinations")
    shared = [c for c in a.case_ids if c in set(b.case_ids)]
    if not shared:
        raise DataError("the two reports have no case in common; compare runs evaluated on the same split")
    ia = [a.case_ids.index(c) for c in shared]
    ib = [b.case_ids.index(c) for c in shared]
    unscored = ~(a.scored[ia] & b.scored[ib])[:, :, None]  # [cases, combinations, 1]

    def paired(values: np.ndarray) -> np.ndarray:
        return np.where(unscored, np.nan, values)

    metrics: list[tuple[str, np.ndarray, np.ndarray]] = [("dice", paired(a.dice[ia] * 100),
                                                          paired(b.dice[ib] * 100))]
    if a.hd95 is not None and b.hd95 is not None and hd95_convention(a) == hd95_convention(b):
        metrics.append(("hd95", paired(a.hd95[ia]), paired(b.hd95[ib])))
    combos: list[int | None] = [None, *(range(len(a.combinations)) if per_combination else [])]
    out = []
    for name, va, vb in metrics:
        both = ~(np.isnan(va) | np.isnan(vb))
        va, vb = np.where(both, va, np.nan), np.where(both, vb, np.nan)
        for combo in combos:
            cols = slice(None) if combo is None else slice(combo, combo + 1)
            ca, cb, d = va[:, cols], vb[:, cols], vb[:, cols] - va[:, cols]
            mean_a, mean_b, diff = combination_mean(ca), combination_mean(cb), combination_mean(d)
            for r, region in enumerate(a.regions):
                lo, hi = bootstrap_mean_ci(d[:, :, r], samples=samples, confidence=confidence, seed=seed)
                out.append(Difference(
                    metric=name, region=region, combination=None if combo is None else a.combinations[combo],
                    mean_a=float(mean_a[r]), mean_b=float(mean_b[r]), diff=float(diff[r]), ci_low=lo, ci_high=hi,
                    cases=int((~np.isnan(d[:, :, r])).any(axis=1).sum()),
                ))
    return out
