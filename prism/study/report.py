"""The study report: per arm mean and sd over seeds, per-combination table, paired differences against the
reference arm with t-intervals over seeds and a verdict (:mod:`prism.study.stats`), loss-term shares, flagged
runs, plots (:mod:`prism.study.plots`).

Reads only what the runs wrote (``eval.json``, ``train_log.csv``, ``adapt.json``) and the study's ``study.yaml``;
writes ``report.md``, ``report.json``, ``report.csv`` and PNG plots into the study folder. Every mean is the
runs' headline metric (:func:`prism.evaluation.results.combination_mean`), the one ``eval.md`` and
``prism-eval compare`` print.

A run is left out of the means, with a note, when it is

* ``missing``: no ``eval.json`` (not run yet, or failed: see its ``error.txt``);
* ``diverged``: a non-finite loss in ``train_log.csv``;
* ``collapsed``: judged from what it predicts (:mod:`prism.study.collapse`: Dice equal to a constant prediction's,
  one label nearly everywhere, or more tumour than brain), whatever the thresholds; or the median Dice over its
  (case, combination) pairs is below ``report.collapse_dice`` in every region; or a loss stuck near its start while
  no region's mean Dice reaches ``report.collapse_stuck_dice``. "Stuck": the mean of the last third of the logged
  rows is at least ``report.collapse_loss_ratio`` times the mean of the first third (3 rows or more), on the fused
  prediction's loss ``fuse`` when the log has it (comparable from step to step), else on the total ``loss``
  (whose per-modality terms grow and shrink with the number of modalities a step's mask keeps, so that alone never
  flags a run).
"""

from __future__ import annotations

import csv
import io
import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import write_text_atomic
from ..errors import ConfigError, DataError
from ..evaluation.results import AVERAGING, EvalReport, nanmean_rows
from ..evaluation.writers import hd95_definition
from .collapse import prediction_collapse
from .logs import read_train_log, term_shares
from .plots import plot_adaptation, plot_per_combination, plot_training_curves
from .spec import ReportSpec, StudySpec
from .stats import MIN_SEEDS, TOO_FEW, PairedDifference, detectable_effect, paired_difference, run_metric

REPORT_FILES = ("report.md", "report.json", "report.csv", "dice_per_combination.png", "training_curves.png")
#: how the report's intervals are made (report.json's "statistics")
INTERVAL = ("Student's t-interval over the per-seed paired differences (each seed's difference of headline "
            "metrics); the within-seed interval resamples test cases with the seeds fixed")


@dataclass
class RunRecord:
    """One run as the report sees it."""

    arm: str
    seed: int
    folder: Path
    status: str = "ok"  # ok, missing, diverged, collapsed
    reason: str = ""
    eval: EvalReport | None = None
    log: dict[str, np.ndarray] = field(default_factory=dict)  # column -> values (train_log.csv)
    adapt: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def flag_run(record: RunRecord, settings: ReportSpec) -> None:
    """Set ``record.status`` and ``reason`` (see the module docstring for the rules)."""
    if record.eval is None:
        error = record.folder / "error.txt"
        record.status, record.reason = "missing", "failed (see error.txt)" if error.is_file() else "no eval.json"
        return
    loss_cols = [k for k in record.log if k == "loss" or k.startswith("loss")]
    for key in loss_cols:
        if not np.all(np.isfinite(record.log[key])):
            record.status, record.reason = "diverged", f"non-finite '{key}' in train_log.csv"
            return
    constant = prediction_collapse(record.eval)
    if constant is not None:
        record.status, record.reason = "collapsed", constant
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        median = np.nanmedian(record.eval.dice.reshape(-1, record.eval.dice.shape[-1]), axis=0)
    if np.all(median < settings.collapse_dice):
        record.status = "collapsed"
        record.reason = ("near-constant prediction (median Dice " + ", ".join(
            f"{r} {v * 100:.1f}" for r, v in zip(record.eval.regions, median, strict=True)) + ")")
        return
    column = "fuse" if "fuse" in record.log else "loss"
    loss = record.log.get(column)
    if loss is not None and loss.size >= 3:
        third = max(1, loss.size // 3)
        early, late = float(np.mean(loss[:third])), float(np.mean(loss[-third:]))
        best = float(np.nanmax(run_metric(record.eval.dice)))
        if late >= settings.collapse_loss_ratio * early and best < settings.collapse_stuck_dice:
            record.status = "collapsed"
            record.reason = (f"'{column}' loss stuck near its start ({early:.4f} -> {late:.4f}) and no region above "
                             f"{settings.collapse_stuck_dice * 100:g}% Dice (best {best * 100:.1f})")


def _scored_final_checkpoint(folder: Path) -> bool:
    """Whether the run's eval.json scored its final ``last.pt`` (its ``train.steps``, the same file now); a folder
    without ``last.pt`` (reports copied without their weights) has nothing to compare and is taken as it is."""
    from ..errors import PrismError
    from ..runs import CHECKPOINT_NAME, load_run_config
    from .run_state import evaluation_is_current

    if not (folder / CHECKPOINT_NAME).is_file():
        return True
    try:
        steps = load_run_config(folder).train.steps
    except PrismError:
        return False
    return evaluation_is_current(folder, steps)


def load_runs(spec: StudySpec, study_dir: Path) -> list[RunRecord]:
    """Every planned run's files, flagged."""
    records = []
    for arm in spec.arms:
        for seed in spec.seeds:
            folder = study_dir / "runs" / arm / f"seed-{seed}"
            rec = RunRecord(arm=arm, seed=seed, folder=folder)
            path = folder / "eval.json"
            if path.is_file():
                try:
                    rec.eval = EvalReport.from_dict(json.loads(path.read_text()), str(path))
                except json.JSONDecodeError as exc:
                    raise DataError(f"{path}: not JSON ({exc})") from None
            rec.log = read_train_log(folder / "train_log.csv")
            adapt = folder / "adapt.json"
            if adapt.is_file():
                rec.adapt = json.loads(adapt.read_text())
            flag_run(rec, spec.report)
            if rec.eval is not None and not _scored_final_checkpoint(folder):
                rec.eval = None
                rec.status, rec.reason = "missing", ("stale eval.json: it did not score the final checkpoint (rerun "
                                                     "the study to evaluate it)")
            records.append(rec)
    return records


def _sd(values: np.ndarray) -> np.ndarray:
    """Sample sd over axis 0 (NaN for fewer than two values)."""
    if values.shape[0] < 2:
        return np.full(values.shape[1:], np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        return np.nanstd(values, axis=0, ddof=1)


def _paired(records: list[RunRecord], ref: str, arm: str, metric: str) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """``[S, N, C, R]`` arrays of the seeds where both arms' runs are ok, on the cases both were scored on."""
    by = {(r.arm, r.seed): r for r in records}
    seeds = sorted({r.seed for r in records
                    if r.arm == arm and r.ok and (ref, r.seed) in by and by[(ref, r.seed)].ok})
    a, b = [], []
    for s in seeds:
        ra, rb = by[(ref, s)].eval, by[(arm, s)].eval
        assert ra is not None and rb is not None
        common = [c for c in ra.case_ids if c in set(rb.case_ids)]
        va, vb = getattr(ra.subset(common), metric), getattr(rb.subset(common), metric)
        if va is None or vb is None:
            return np.zeros((0,)), np.zeros((0,)), []
        a.append(va)
        b.append(vb)
    if not seeds or len({x.shape for x in a}) > 1:  # runs scored on different case sets cannot be stacked
        return np.zeros((0,)), np.zeros((0,)), []
    return np.stack(a), np.stack(b), seeds


def _floats(values: np.ndarray) -> list[float | None]:
    return [None if (v is None or np.isnan(v)) else round(float(v), 6) for v in np.asarray(values, dtype=float)]


def summarise(spec: StudySpec, records: list[RunRecord]) -> dict[str, Any]:
    """Everything report.json holds (also the source of the Markdown and CSV)."""
    first = next((r.eval for r in records if r.eval is not None), None)
    if first is None:
        raise DataError("no run of this study has been evaluated yet (no eval.json under runs/)")
    regions, combinations = list(first.regions), list(first.combinations)
    has_hd = all(r.eval.hd95 is not None for r in records if r.ok and r.eval is not None)
    ref = spec.reference_arm
    settings = spec.report
    arms: dict[str, Any] = {}
    for arm in spec.arms:
        ok = [r for r in records if r.arm == arm and r.ok]
        dice = np.array([run_metric(r.eval.dice) * 100 for r in ok]).reshape(len(ok), len(regions))
        per_combo = np.array([r.eval.mean_dice() * 100 for r in ok]).reshape(len(ok), len(combinations),
                                                                              len(regions))
        entry: dict[str, Any] = {
            "seeds_used": [r.seed for r in ok], "dice_mean": _floats(nanmean_rows(dice)), "dice_sd": _floats(_sd(dice)),
            "dice_per_seed": {str(r.seed): _floats(d) for r, d in zip(ok, dice, strict=True)},
            "per_combination_dice_mean": [_floats(v) for v in nanmean_rows(per_combo)],
            "per_combination_dice_sd": [_floats(v) for v in _sd(per_combo)],
        }
        if has_hd:
            hd = np.array([run_metric(r.eval.hd95) for r in ok]).reshape(len(ok), len(regions))
            entry.update({"hd95_mean": _floats(nanmean_rows(hd)), "hd95_sd": _floats(_sd(hd))})
        shares = term_shares([r.log for r in ok])
        if shares:
            entry["term_shares"] = shares
        if arm != ref:
            entry["vs_reference"] = {}
            for metric, scale in (("dice", 100.0), *((("hd95", 1.0),) if has_hd else ())):
                a, b, seeds = _paired(records, ref, arm, metric)
                if not seeds:
                    entry["vs_reference"][metric] = None
                    continue
                d: PairedDifference = paired_difference(a * scale, b * scale, samples=settings.bootstrap_samples,
                                                        confidence=settings.confidence, seed=settings.seed,
                                                        higher_is_better=metric == "dice")
                entry["vs_reference"][metric] = {
                    "seeds": seeds, "cases": d.cases, "difference": _floats(d.estimate), "low": _floats(d.low),
                    "high": _floats(d.high), "sd_over_seeds": _floats(d.sd), "verdict": d.verdicts,
                    "within_seed_low": _floats(d.within_low), "within_seed_high": _floats(d.within_high),
                    "detectable_effect_80": _floats(np.array([detectable_effect(float(v), d.seeds,
                                                                                confidence=settings.confidence)
                                                              for v in d.sd])),
                    "per_seed": {str(s): _floats(v) for s, v in zip(seeds, d.per_seed, strict=True)}}
        arms[arm] = entry
    runs = [{"arm": r.arm, "seed": r.seed, "folder": str(r.folder), "status": r.status, "reason": r.reason,
             "dice": _floats(run_metric(r.eval.dice) * 100) if r.eval is not None else None,
             "hd95": (_floats(run_metric(r.eval.hd95)) if r.eval is not None and r.eval.hd95 is not None else None)}
            for r in records]
    return {"name": spec.name, "description": spec.description, "reference": ref, "regions": regions,
            "combinations": combinations, "seeds": spec.seeds, "arms": arms, "runs": runs,
            "conventions": conventions(records),
            "statistics": {"interval": INTERVAL, "confidence": settings.confidence, "min_seeds": MIN_SEEDS,
                           "within_seed_samples": settings.bootstrap_samples, "within_seed_seed": settings.seed},
            "adaptation": _adaptation_summary(spec, records)}


def conventions(records: list[RunRecord]) -> dict[str, Any]:
    """Which HD95 and lesion-wise definitions the usable runs were evaluated with, and how means are taken.

    Reports that predate the ``hd95_convention`` setting computed MONAI's HD95."""
    ok = [r.eval for r in records if r.ok and r.eval is not None]

    def used(key: str, default: str | None) -> str | None:
        values = sorted({str(v) for v in (e.settings.get(key, default) for e in ok) if v is not None})
        return None if not values else values[0] if len(values) == 1 else "mixed: " + ", ".join(values)

    return {"hd95": used("hd95_convention", "monai") if any(e.hd95 is not None for e in ok) else None,
            "lesion": used("lesion_convention", None), "averaging": AVERAGING}


def _adaptation_summary(spec: StudySpec, records: list[RunRecord]) -> dict[str, Any] | None:
    out: dict[str, Any] = {}
    for arm in spec.arms:
        curves = [r.adapt for r in records if r.arm == arm and r.ok and r.adapt]
        if not curves:
            continue
        steps = curves[0]["steps"]
        if any(c["steps"] != steps for c in curves):
            continue
        means = np.array([c["dice_mean"] for c in curves], dtype=float) * 100  # [runs, K, R]
        out[arm] = {"site": curves[0]["site"], "steps": steps, "runs": len(curves),
                    "dice_mean": [_floats(v) for v in nanmean_rows(means)], "dice_sd": [_floats(v) for v in _sd(means)]}
    return out or None


# ---- files ---------------------------------------------------------------------------------------------------

def _f(v: float | None, digits: int = 2, signed: bool = False) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{v:+.{digits}f}" if signed else f"{v:.{digits}f}"


def _interval(low: float | None, high: float | None) -> str:
    return f"[{_f(low, signed=True)}, {_f(high, signed=True)}]"


def report_markdown(summary: dict[str, Any]) -> str:
    regions, ref = summary["regions"], summary["reference"]
    st, conv = summary["statistics"], summary["conventions"]
    level = f"{st['confidence'] * 100:g}%"
    lines = [f"# Study '{summary['name']}'", ""]
    if summary["description"]:
        lines += [summary["description"], ""]
    lines += [f"Seeds {summary['seeds']}; reference arm **{ref}**. Dice in %, HD95 in mm: for each run the "
              f"{conv['averaging']}; below, the mean and sd of that over seeds. HD95: "
              + ("not computed" if conv["hd95"] is None else hd95_definition(conv["hd95"])
                 if not conv["hd95"].startswith("mixed") else conv["hd95"])
              + ("" if conv["lesion"] is None else f"; lesion-wise metrics: {conv['lesion']}") + ".", ""]
    flagged = [r for r in summary["runs"] if r["status"] != "ok"]
    if flagged:
        lines.append("**Left out of every mean and difference:**")
        lines += [f"- {r['arm']}/seed-{r['seed']}: {r['status']}: {r['reason']}" for r in flagged]
        lines.append("")
    has_hd = any("hd95_mean" in a for a in summary["arms"].values())
    cols = ["Arm", "Seeds", *(f"{r} Dice" for r in regions), *((f"{r} HD95" for r in regions) if has_hd else ())]
    lines += ["## Mean over the combinations (mean ± sd over seeds)", "",
              "| " + " | ".join(cols) + " |", "|:---|---:|" + "---:|" * (len(cols) - 2)]
    for arm, a in summary["arms"].items():
        cells = [f"**{arm}**" if arm == ref else arm, str(len(a["seeds_used"]))]
        cells += [f"{_f(m)} ± {_f(s)}" for m, s in zip(a["dice_mean"], a["dice_sd"], strict=True)]
        if has_hd:
            cells += [f"{_f(m)} ± {_f(s)}" for m, s in zip(a.get("hd95_mean", [None] * len(regions)),
                                                          a.get("hd95_sd", [None] * len(regions)), strict=True)]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"## Paired differences against '{ref}' ({level} intervals over seeds)", "",
              f"Difference = arm − {ref}, paired by seed: each seed's difference of the two runs' means, then their "
              f"mean. Interval: Student's t over those per-seed differences ({level}). Verdict: with fewer than "
              f"{st['min_seeds']} seeds, '{TOO_FEW}'; otherwise better or worse when the interval excludes 0, else "
              "'no difference shown'. 'Within-seed' resamples the test cases with the seeds fixed "
              f"({st['within_seed_samples']} draws, seed {st['within_seed_seed']}): it shows how much the test set "
              "alone moves the estimate and is no evidence of a difference between methods. '80% power' is the "
              "smallest difference these seeds would detect 4 times in 5, given the sd of the per-seed "
              "differences.", "",
              f"| Arm | Metric | Region | Difference | {level} interval (seeds) | Verdict | Within-seed (cases) | "
              "80% power |", "|:---|:---|:---|---:|:---:|:---|:---:|---:|"]
    for arm, a in summary["arms"].items():
        for metric, d in (a.get("vs_reference") or {}).items():
            unit = "Dice (points)" if metric == "dice" else "HD95 (mm)"
            if d is None:
                lines.append(f"| {arm} | {unit} | | n/a (no seed with both runs usable) | | | | |")
                continue
            for i, r in enumerate(regions):
                lines.append(f"| {arm} | {unit} | {r} | {_f(d['difference'][i], signed=True)} | "
                             f"{_interval(d['low'][i], d['high'][i])} | {d['verdict'][i]} "
                             f"({len(d['seeds'])} seeds) | "
                             f"{_interval(d['within_seed_low'][i], d['within_seed_high'][i])} | "
                             f"±{_f(d['detectable_effect_80'][i])} |")
    shares = {arm: a["term_shares"] for arm, a in summary["arms"].items() if a.get("term_shares")}
    if shares:
        parts = sorted({p for v in shares.values() for p in v})
        lines += ["", "## Loss terms' shares of the total (%, mean over each run's logged rows, then over seeds)", "",
                  "| Arm | " + " | ".join(parts) + " |", "|:---|" + "---:|" * len(parts)]
        for arm, v in shares.items():
            lines.append(f"| {arm} | " + " | ".join(_f(None if v.get(p) is None else v[p] * 100, 1) for p in parts)
                         + " |")
    lines += ["", "## Dice (%) per combination (mean over seeds)", ""]
    arms = list(summary["arms"])
    head = ["#", "Modalities", *(f"{arm} {r}" for arm in arms for r in regions)]
    lines += ["| " + " | ".join(head) + " |", "|---:|:---|" + "---:|" * (len(head) - 2)]
    for i, name in enumerate(summary["combinations"]):
        cells = [str(i), name]
        for arm in arms:
            table = summary["arms"][arm]["per_combination_dice_mean"]
            cells += [_f(v) for v in (table[i] if table else [None] * len(regions))]
        lines.append("| " + " | ".join(cells) + " |")
    adapt = summary.get("adaptation")
    if adapt:
        lines += ["", "## Adaptation to a held-out site (Dice %, mean ± sd over seeds)", ""]
        for arm, a in adapt.items():
            lines += [f"**{arm}** (site '{a['site']}', {a['runs']} runs)", "",
                      "| Steps | " + " | ".join(regions) + " |", "|---:|" + "---:|" * len(regions)]
            for k, m, s in zip(a["steps"], a["dice_mean"], a["dice_sd"], strict=True):
                lines.append(f"| {k} | " + " | ".join(f"{_f(x)} ± {_f(y)}" for x, y in zip(m, s, strict=True)) + " |")
            lines.append("")
    lines += ["", "## Runs", "", "| Arm | Seed | Status | " + " | ".join(f"{r} Dice" for r in regions) + " |",
              "|:---|---:|:---|" + "---:|" * len(regions)]
    for r in summary["runs"]:
        dice = r["dice"] or [None] * len(regions)
        lines.append(f"| {r['arm']} | {r['seed']} | {r['status']} | " + " | ".join(_f(v) for v in dice) + " |")
    lines.append("")
    lines.append("Plots: dice_per_combination.png, training_curves.png (the fused segmentation loss and each loss "
                 "term, never the total)" + (", adaptation_curves.png" if adapt else "") + ".")
    return "\n".join(lines) + "\n"


def report_csv(summary: dict[str, Any]) -> str:
    """One row per run and region: arm, seed, status, region, Dice and HD95 (15-combination means)."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["arm", "seed", "status", "region", "dice", "hd95_mm", "reason"])
    for r in summary["runs"]:
        for i, region in enumerate(summary["regions"]):
            dice = r["dice"][i] if r["dice"] else None
            hd = r["hd95"][i] if r["hd95"] else None
            w.writerow([r["arm"], r["seed"], r["status"], region, "" if dice is None else dice,
                        "" if hd is None else hd, r["reason"]])
    return buf.getvalue()


def load_study_spec(study_dir: Path) -> StudySpec:
    from .runner import SPEC_NAME
    from .spec import load_spec

    path = Path(study_dir) / SPEC_NAME
    if not path.is_file():
        raise ConfigError(f"{study_dir}: not a study folder (no {SPEC_NAME}; make one with prism-study run)")
    return load_spec(path)


def write_study_report(study_dir: Path, spec: StudySpec | None = None) -> dict[str, Any]:
    """Read the study's runs and write report.md/.json/.csv and the plots; returns the summary (report.json)."""
    study_dir = Path(study_dir)
    spec = spec or load_study_spec(study_dir)
    records = load_runs(spec, study_dir)
    summary = summarise(spec, records)
    write_text_atomic(study_dir / "report.json", json.dumps(summary, indent=2) + "\n")
    write_text_atomic(study_dir / "report.csv", report_csv(summary))
    write_text_atomic(study_dir / "report.md", report_markdown(summary))
    plot_per_combination(summary, study_dir / "dice_per_combination.png")
    plot_training_curves({arm: [r.log for r in records if r.arm == arm and r.ok and r.log] for arm in spec.arms},
                         study_dir / "training_curves.png")
    if summary["adaptation"]:
        plot_adaptation(summary, study_dir / "adaptation_curves.png")
    return summary
