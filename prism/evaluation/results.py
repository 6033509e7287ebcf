"""The evaluation results as data: Dice and HD95 per case, combination and region, and a fast-adaptation pair;
and the one way prism averages them (:func:`combination_mean`).

``to_dict``/``from_dict`` round-trip through ``eval.json``; the files themselves are written by
:mod:`prism.evaluation.writers`, which imports this module (never the other way round).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import DataError


def nanmean_rows(values: np.ndarray) -> np.ndarray:
    """Mean over axis 0 ignoring NaN (NaN where a column has no value, and for no rows at all)."""
    if values.shape[0] == 0:
        return np.full(values.shape[1:], np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        return np.nanmean(values, axis=0)


#: how every headline number of prism is averaged (eval.md, eval.json, compare, the study report, adaptation curves)
AVERAGING = ("mean over the modality combinations of each combination's mean over the cases that can supply it "
             "(NaN entries left out at both levels)")


def mean_over_cases(values: np.ndarray, case_weights: np.ndarray | None = None) -> np.ndarray:
    """Per-combination means over cases, NaN entries left out.

    Args:
        values: ``[cases, combinations, regions]``.
        case_weights: optional ``[B, cases]`` weights (e.g. bootstrap counts): B weighted means at once.

    Returns:
        ``[combinations, regions]``, or ``[B, combinations, regions]`` with weights; NaN where no case has a value.
    """
    if case_weights is None:
        return nanmean_rows(values)
    n, c, r = values.shape
    valid = ~np.isnan(values)
    sums = case_weights @ np.where(valid, values, 0.0).reshape(n, c * r)
    counts = case_weights @ valid.reshape(n, c * r).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.where(counts > 0, counts, 1.0), np.nan).reshape(-1, c, r)


def mean_over_combinations(per_combination: np.ndarray) -> np.ndarray:
    """``[..., regions]``: mean of per-combination values ``[..., combinations, regions]``, NaN rows left out."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        return np.nanmean(per_combination, axis=-2)


def combination_mean(values: np.ndarray, case_weights: np.ndarray | None = None) -> np.ndarray:
    """The headline metric of a run, the one definition every report uses (:data:`AVERAGING`).

    For each combination, the mean over the cases scored on it; then the mean over the combinations. A case that
    lacks a modality of a combination is not scored on it (NaN), so it weighs on the combinations it can supply
    only; averaging each case over its combinations first would weigh combinations differently.

    Args:
        values: ``[cases, combinations, regions]`` (e.g. Dice or HD95 of one run).
        case_weights: optional ``[B, cases]`` case weights (bootstrap counts): B weighted metrics at once.

    Returns:
        ``[regions]``, or ``[B, regions]`` with weights.
    """
    return mean_over_combinations(mean_over_cases(values, case_weights))


def _floats(names: tuple[str, ...] | list[str], values: np.ndarray) -> dict[str, float | None]:
    """``{name: value}`` with NaN written as None (JSON has no NaN)."""
    return {n: (None if np.isnan(v) else float(v)) for n, v in zip(names, values, strict=True)}


def _array(rows: list[list[float | None]]) -> np.ndarray:
    return np.array([[np.nan if v is None else v for v in row] for row in rows], dtype=np.float64)


@dataclass
class EvalReport:
    """Metrics of one model on a list of cases under every modality combination.

    dice, hd95: float ``[cases, combinations, regions]`` (Dice in [0, 1], HD95 in mm; ``hd95`` None when not
    computed, NaN entries are left out of the means). A (case, combination) pair that was not scored, because the
    case lacks a modality of the combination, is NaN in every region of ``dice`` (see :attr:`scored`).
    ``settings`` records how they were computed (HD95 and lesion-wise conventions included). ``lesion_dice``,
    ``lesion_hd95``: the BraTS 2023 challenge's lesion-wise metrics (same shape; None unless
    ``eval.lesion_metrics``).

    What the model predicted, for telling a collapsed model from a poor one (None in reports that predate them):
    ``label_fraction [cases, combinations, labels]`` the share of the volume's voxels predicted as each label
    (NaN where not scored); ``constant_dice [cases, labels, regions]`` the Dice a prediction of that one label
    everywhere would get; ``brain_fraction [cases]`` the share of voxels where an available modality is non-zero.
    ``label_names`` name the label values 0..labels-1. ``checkpoint``: the checkpoint the report scored
    (:func:`prism.evaluation.provenance.checkpoint_record`), None when not tied to one.
    """

    modalities: tuple[str, ...]
    regions: tuple[str, ...]
    combinations: list[str]
    case_ids: list[str]
    dice: np.ndarray
    hd95: np.ndarray | None = None
    sites: list[str] = field(default_factory=list)
    combination_masks: list[tuple[bool, ...]] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    adaptation: AdaptationResult | None = None
    lesion_dice: np.ndarray | None = None
    lesion_hd95: np.ndarray | None = None
    label_names: list[str] = field(default_factory=list)
    label_fraction: np.ndarray | None = None
    constant_dice: np.ndarray | None = None
    brain_fraction: np.ndarray | None = None
    checkpoint: dict[str, Any] | None = None

    def lesion_arrays(self) -> dict[str, np.ndarray]:
        """The lesion-wise metrics present: name (``lesion_dice``, ``lesion_hd95``) -> ``[cases, combos, regions]``."""
        return {k: v for k, v in (("lesion_dice", self.lesion_dice), ("lesion_hd95", self.lesion_hd95))
                if v is not None}

    @property
    def has_predictions(self) -> bool:
        """Whether the report holds what the model predicted (label fractions and constant-prediction Dice)."""
        return self.label_fraction is not None and self.constant_dice is not None

    @property
    def scored(self) -> np.ndarray:
        """bool ``[cases, combinations]``: the pairs that were scored (the case has every modality of it)."""
        return ~np.isnan(self.dice).all(axis=2) if self.dice.shape[2] else np.ones(self.dice.shape[:2], bool)

    def cases_per_combination(self) -> np.ndarray:
        """int ``[combinations]``: how many cases each combination was scored on."""
        return self.scored.sum(axis=0)

    def mean_dice(self) -> np.ndarray:
        """``[combinations, regions]``: mean over cases."""
        return mean_over_cases(self.dice)

    def mean_hd95(self) -> np.ndarray | None:
        """``[combinations, regions]``: mean over cases (NaN entries left out), or None without HD95."""
        return None if self.hd95 is None else mean_over_cases(self.hd95)

    def headline(self, metric: str = "dice") -> np.ndarray:
        """``[regions]``: :func:`combination_mean` of ``metric`` (``dice``, ``hd95``, ``lesion_dice``, ...)."""
        values = getattr(self, metric)
        if values is None:
            raise ValueError(f"the report has no {metric}")
        return combination_mean(values)

    def subset(self, case_ids: list[str]) -> EvalReport:
        """The same report restricted to ``case_ids`` (in that order), without the adaptation part."""
        rows = [self.case_ids.index(c) for c in case_ids]

        def pick(a: np.ndarray | None) -> np.ndarray | None:
            return None if a is None else a[rows]

        return EvalReport(
            modalities=self.modalities, regions=self.regions, combinations=list(self.combinations),
            case_ids=list(case_ids), dice=self.dice[rows], hd95=pick(self.hd95),
            sites=[self.sites[r] for r in rows] if self.sites else [], combination_masks=list(self.combination_masks),
            settings=dict(self.settings), **{k: v[rows] for k, v in self.lesion_arrays().items()},
            label_names=list(self.label_names), label_fraction=pick(self.label_fraction),
            constant_dice=pick(self.constant_dice), brain_fraction=pick(self.brain_fraction),
            checkpoint=self.checkpoint,
        )

    # ---- JSON ------------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        dice, hd = self.mean_dice(), self.mean_hd95()
        counts = self.cases_per_combination()
        combos = []
        for i, name in enumerate(self.combinations):
            entry: dict[str, Any] = {"index": i, "name": name, "num_cases": int(counts[i]),
                                     "dice": _floats(self.regions, dice[i])}
            if self.combination_masks:
                entry["mask"] = list(self.combination_masks[i])
            if hd is not None:
                entry["hd95"] = _floats(self.regions, hd[i])
            for key, values in self.lesion_arrays().items():
                entry[key] = _floats(self.regions, mean_over_cases(values)[i])
            combos.append(entry)
        mean: dict[str, Any] = {"dice": _floats(self.regions, combination_mean(self.dice))}
        if self.hd95 is not None:
            mean["hd95"] = _floats(self.regions, combination_mean(self.hd95))
        for key, values in self.lesion_arrays().items():
            mean[key] = _floats(self.regions, combination_mean(values))
        cases = {}
        for c, cid in enumerate(self.case_ids):
            per_combo: dict[str, Any] = {}
            for i, name in enumerate(self.combinations):
                values: dict[str, Any] = {"dice": _floats(self.regions, self.dice[c, i])}
                if self.hd95 is not None:
                    values["hd95"] = _floats(self.regions, self.hd95[c, i])
                for key, array in self.lesion_arrays().items():
                    values[key] = _floats(self.regions, array[c, i])
                if self.label_fraction is not None:
                    values["label_fraction"] = _floats(self.label_names, self.label_fraction[c, i])
                per_combo[name] = values
            case: dict[str, Any] = {"site": self.sites[c] if self.sites else "", "combinations": per_combo}
            if self.brain_fraction is not None:
                case["brain_fraction"] = float(self.brain_fraction[c])
            if self.constant_dice is not None:
                case["constant_dice"] = {label: _floats(self.regions, self.constant_dice[c, k])
                                         for k, label in enumerate(self.label_names)}
            cases[cid] = case
        out: dict[str, Any] = {
            "checkpoint": self.checkpoint,
            "modalities": list(self.modalities),
            "regions": list(self.regions),
            "metrics": (["dice", "hd95"] if self.hd95 is not None else ["dice"]) + list(self.lesion_arrays()),
            "units": {"dice": "fraction", "hd95": "mm", "lesion_dice": "fraction", "lesion_hd95": "mm"},
            "settings": self.settings,
            "averaging": AVERAGING,
            "num_cases": len(self.case_ids),
            "combinations": combos,
            "mean": mean,
            "cases": cases,
        }
        if self.label_names:
            out["labels"] = list(self.label_names)
        if self.adaptation is not None:
            out["adaptation"] = self.adaptation.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "eval.json") -> EvalReport:
        """Rebuild a report from :meth:`to_dict` output (per-case values included)."""
        try:
            regions = tuple(data["regions"])
            names = [c["name"] for c in data["combinations"]]
            case_ids = list(data["cases"])
            labels = [str(v) for v in data.get("labels", [])]
            dice, hd, sites = [], [], []
            fractions: list[np.ndarray] = []
            constant: list[np.ndarray] = []
            brain: list[float] = []
            has_hd = "hd95" in data.get("metrics", [])
            lesion_keys = [k for k in ("lesion_dice", "lesion_hd95") if k in data.get("metrics", [])]
            lesion: dict[str, list[np.ndarray]] = {k: [] for k in lesion_keys}
            for cid in case_ids:
                entry = data["cases"][cid]
                sites.append(entry.get("site", ""))
                combos = entry["combinations"]
                dice.append(_array([[combos[n]["dice"][r] for r in regions] for n in names]))
                if has_hd:
                    hd.append(_array([[combos[n]["hd95"][r] for r in regions] for n in names]))
                for key in lesion_keys:
                    lesion[key].append(_array([[combos[n][key][r] for r in regions] for n in names]))
                if labels and "constant_dice" in entry:
                    fractions.append(_array([[combos[n]["label_fraction"][k] for k in labels] for n in names]))
                    constant.append(_array([[entry["constant_dice"][k][r] for r in regions] for k in labels]))
                    brain.append(float(entry["brain_fraction"]))
            shape = (0, len(names), len(regions))
            adaptation = data.get("adaptation")
            predictions = bool(labels) and len(constant) == len(case_ids)
            checkpoint = data.get("checkpoint")
            return cls(
                modalities=tuple(data["modalities"]), regions=regions, combinations=names, case_ids=case_ids,
                dice=np.stack(dice) if dice else np.zeros(shape),
                hd95=(np.stack(hd) if hd else np.zeros(shape)) if has_hd else None, sites=sites,
                combination_masks=[tuple(c["mask"]) for c in data["combinations"] if "mask" in c],
                settings=dict(data.get("settings", {})),
                adaptation=AdaptationResult.from_dict(adaptation, source) if adaptation else None,
                **{k: np.stack(v) if v else np.zeros(shape) for k, v in lesion.items()},
                label_names=labels,
                label_fraction=(np.stack(fractions) if fractions else np.zeros((0, len(names), len(labels))))
                if predictions else None,
                constant_dice=(np.stack(constant) if constant else np.zeros((0, len(labels), len(regions))))
                if predictions else None,
                brain_fraction=np.array(brain, dtype=np.float64) if predictions else None,
                checkpoint=dict(checkpoint) if isinstance(checkpoint, dict) else None,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"{source}: not a prism evaluation report ({type(exc).__name__}: {exc})") from None


@dataclass
class AdaptationResult:
    """Fast adaptation to a held-out site: the query cases before and after ``steps`` fine-tuning steps."""

    site: str
    support_cases: list[str]
    query_cases: list[str]
    steps: int
    lr: float
    before: EvalReport
    after: EvalReport
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"site": self.site, "support_cases": self.support_cases, "query_cases": self.query_cases,
                "steps": self.steps, "lr": self.lr, "settings": self.settings,
                "before": self.before.to_dict(), "after": self.after.to_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "eval.json") -> AdaptationResult:
        return cls(site=data["site"], support_cases=list(data["support_cases"]),
                   query_cases=list(data["query_cases"]), steps=int(data["steps"]), lr=float(data["lr"]),
                   before=EvalReport.from_dict(data["before"], source),
                   after=EvalReport.from_dict(data["after"], source), settings=dict(data.get("settings", {})))
