"""Compare two evaluation reports case by case: per-region differences with paired bootstrap confidence intervals.

For each region and metric, a case's value is its mean over the combinations (NaN entries left out: HD95 left
out by convention, and combinations not scored for the case because it lacks one of their modalities; a pair
scored in only one of the reports is left out of both);
the difference is B - A over the cases both reports hold, and its confidence interval comes from resampling
those cases with replacement (seeded, BCa: bias-corrected and accelerated, scipy.stats.bootstrap).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import stats

from ..errors import DataError
from .results import EvalReport
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
    values = np.asarray(values, dtype=np.float64)
    values = values[~np.isnan(values)]
    if values.size == 0 or (values.size == 1):
        return float("nan"), float("nan")
    if np.ptp(values) <= 1e-9 * max(1.0, float(np.abs(values).max())):  # no spread (up to rounding): BCa is 0/0
        return float(values.mean()), float(values.mean())
    res = stats.bootstrap((values,), np.mean, n_resamples=samples, confidence_level=confidence, method="BCa",
                          rng=np.random.default_rng(seed))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def _case_values(metric: np.ndarray, combination: int | None) -> np.ndarray:
    """``[cases, regions]``: one combination, or the mean over combinations ignoring NaN."""
    if combination is not None:
        return metric[:, combination]
    ok = ~np.isnan(metric)
    with np.errstate(all="ignore"):
        return np.where(ok.any(1), np.nansum(metric, 1) / np.maximum(ok.sum(1), 1), np.nan)


def compare_reports(a: EvalReport, b: EvalReport, *, samples: int = 10000, confidence: float = 0.95, seed: int = 0,
                    per_combination: bool = False) -> list[Difference]:
    """Per-region differences B - A (Dice in percentage points, HD95 in mm) over the cases both reports share."""
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
    if a.hd95 is not None and b.hd95 is not None:
        metrics.append(("hd95", paired(a.hd95[ia]), paired(b.hd95[ib])))
    combos: list[int | None] = [None, *(range(len(a.combinations)) if per_combination else [])]
    out = []
    for name, va, vb in metrics:
        for combo in combos:
            ca, cb = _case_values(va, combo), _case_values(vb, combo)
            for r, region in enumerate(a.regions):
                d = cb[:, r] - ca[:, r]
                ok = ~np.isnan(d)
                lo, hi = bootstrap_ci(d, samples=samples, confidence=confidence, seed=seed)
                out.append(Difference(
                    metric=name, region=region, combination=None if combo is None else a.combinations[combo],
                    mean_a=float(np.mean(ca[ok, r])) if ok.any() else float("nan"),
                    mean_b=float(np.mean(cb[ok, r])) if ok.any() else float("nan"),
                    diff=float(np.mean(d[ok])) if ok.any() else float("nan"), ci_low=lo, ci_high=hi,
                    cases=int(ok.sum()),
                ))
    return out
