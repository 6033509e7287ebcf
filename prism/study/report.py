"""The study report: per arm mean and sd over seeds, per-combination table, paired differences against the
reference arm with hierarchical-bootstrap intervals (:mod:`prism.study.stats`), flagged runs, plots.

Reads only what the runs wrote (``eval.json``, ``train_log.csv``, ``adapt.json``) and the study's ``study.yaml``;
writes ``report.md``, ``report.json``, ``report.csv`` and PNG plots into the study folder.

A run is left out of the means, with a note, when it is

* ``missing``: no ``eval.json`` (not run yet, or failed: see its ``error.txt``);
* ``diverged``: a non-finite loss in ``train_log.csv``;
* ``collapsed``: a (near-)constant prediction, i.e. the median Dice over its (case, combination) pairs is below
  ``report.collapse_dice`` in every region; or a loss stuck near its start while no region's mean Dice reaches
  ``report.collapse_stuck_dice``. "Stuck": the mean of the last third of the logged rows is at least
  ``report.collapse_loss_ratio`` times the mean of the first third (3 rows or more), on the fused prediction's
  loss ``fuse`` when the log has it (comparable from step to step), else on the total ``loss`` (whose per-modality
  terms grow and shrink with the number of modalities a step's mask keeps, so that alone never flags a run).
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

from ..atomic import write_atomic, write_text_atomic
from ..errors import ConfigError, DataError
from ..evaluation.results import EvalReport, nanmean_rows
from .spec import ReportSpec, StudySpec
from .stats import PairedDifference, paired_difference, run_metric

REPORT_FILES = ("report.md", "report.json", "report.csv", "dice_per_combination.png", "training_curves.png")


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


def read_train_log(path: Path) -> dict[str, np.ndarray]:
    """``train_log.csv`` as columns of floats (empty cells and text as NaN); {} when absent."""
    if not path.is_file():
        return {}
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        return {}

    def num(text: str | None) -> float:
        try:
            return float(text) if text not in (None, "") else math.nan
        except ValueError:
            return math.nan

    return {key: np.array([num(r.get(key)) for r in rows]) for key in rows[0]}


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
        if arm != ref:
            entry["vs_reference"] = {}
            for metric, scale in (("dice", 100.0), *((("hd95", 1.0),) if has_hd else ())):
                a, b, seeds = _paired(records, ref, arm, metric)
                if not seeds:
                    entry["vs_reference"][metric] = None
                    continue
                d: PairedDifference = paired_difference(a * scale, b * scale, samples=settings.bootstrap_samples,
                                                        confidence=settings.confidence, seed=settings.seed)
                entry["vs_reference"][metric] = {
                    "seeds": seeds, "cases": d.cases, "difference": _floats(d.estimate), "low": _floats(d.low),
                    "high": _floats(d.high), "per_seed": {str(s): _floats(v) for s, v in zip(seeds, d.per_seed,
                                                                                              strict=True)},
                    "seeds_agreeing": [int(x) for x in d.agree]}
        arms[arm] = entry
    runs = [{"arm": r.arm, "seed": r.seed, "folder": str(r.folder), "status": r.status, "reason": r.reason,
             "dice": _floats(run_metric(r.eval.dice) * 100) if r.eval is not None else None,
             "hd95": (_floats(run_metric(r.eval.hd95)) if r.eval is not None and r.eval.hd95 is not None else None)}
            for r in records]
    return {"name": spec.name, "description": spec.description, "reference": ref, "regions": regions,
            "combinations": combinations, "seeds": spec.seeds, "arms": arms, "runs": runs,
            "bootstrap": {"samples": settings.bootstrap_samples, "confidence": settings.confidence,
                          "seed": settings.seed, "procedure": "hierarchical: seeds then cases (pigeonhole)"},
            "adaptation": _adaptation_summary(spec, records)}


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


def report_markdown(summary: dict[str, Any]) -> str:
    regions, ref = summary["regions"], summary["reference"]
    b = summary["bootstrap"]
    level = f"{b['confidence'] * 100:g}%"
    lines = [f"# Study '{summary['name']}'", ""]
    if summary["description"]:
        lines += [summary["description"], ""]
    lines += [f"Seeds {summary['seeds']}; reference arm **{ref}**. Dice in %, HD95 in mm: for each run the mean over "
              f"cases of each of the {len(summary['combinations'])} modality combinations, then the mean over "
              "combinations; below, the mean and sd of that over seeds.", ""]
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
    lines += ["", f"## Paired differences against '{ref}' ({level} intervals over seeds and cases)", "",
              f"Difference = arm − {ref}, paired by seed. Interval: hierarchical bootstrap, {b['samples']} "
              "iterations, each drawing the seeds with replacement and then the test cases with replacement (one "
              "case draw shared by the drawn seeds, since every run is scored on the same cases); percentile "
              f"interval; bootstrap seed {b['seed']}. 'Agree' = seeds whose own difference has the mean's sign.", "",
              "| Arm | Metric | Region | Difference | Interval | Agree |", "|:---|:---|:---|---:|:---:|---:|"]
    for arm, a in summary["arms"].items():
        for metric, d in (a.get("vs_reference") or {}).items():
            unit = "Dice (points)" if metric == "dice" else "HD95 (mm)"
            if d is None:
                lines.append(f"| {arm} | {unit} | | n/a (no seed with both runs usable) | | |")
                continue
            for i, r in enumerate(regions):
                lines.append(f"| {arm} | {unit} | {r} | {_f(d['difference'][i], signed=True)} | "
                             f"[{_f(d['low'][i], signed=True)}, {_f(d['high'][i], signed=True)}] | "
                             f"{d['seeds_agreeing'][i]}/{len(d['seeds'])} |")
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
    lines.append("Plots: dice_per_combination.png, training_curves.png"
                 + (", adaptation_curves.png" if adapt else "") + ".")
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


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: Path) -> None:
    fig.tight_layout()
    write_atomic(path, lambda tmp: fig.savefig(tmp, format="png"))


def plot_per_combination(summary: dict[str, Any], path: Path) -> None:
    """Bars: Dice per combination, one panel per region, one bar per arm (sd over seeds as error bars)."""
    regions, combos, arms = summary["regions"], summary["combinations"], list(summary["arms"])
    fig = _figure(max(8.0, 0.55 * len(combos) * max(1, len(arms)) / 1.5), 2.6 * len(regions))
    width = 0.8 / max(1, len(arms))
    x = np.arange(len(combos))
    for j, region in enumerate(regions):
        ax = fig.add_subplot(len(regions), 1, j + 1)
        for k, arm in enumerate(arms):
            a = summary["arms"][arm]
            mean = np.array([[np.nan if v is None else v for v in row] for row in a["per_combination_dice_mean"]]
                            or np.full((len(combos), len(regions)), np.nan))
            sd = np.array([[np.nan if v is None else v for v in row] for row in a["per_combination_dice_sd"]]
                          or np.full((len(combos), len(regions)), np.nan))
            ax.bar(x + (k - (len(arms) - 1) / 2) * width, mean[:, j], width, yerr=np.nan_to_num(sd[:, j]),
                   label=arm, capsize=1.5)
        ax.set_ylabel(f"{region} Dice (%)")
        ax.set_ylim(0, 100)
        ax.set_xticks(x, combos if j == len(regions) - 1 else [""] * len(combos), rotation=60, ha="right",
                      fontsize=7)
        if j == 0:
            ax.legend(fontsize=7, ncol=len(arms))
    _save(fig, path)


def plot_training_curves(spec: StudySpec, records: list[RunRecord], path: Path) -> None:
    """Training loss against step per arm: mean over the usable seeds, band = ± sd."""
    fig = _figure(6.5, 3.8)
    ax = fig.add_subplot()
    for arm in spec.arms:
        logs = [r.log for r in records if r.arm == arm and r.ok and "loss" in r.log and "step" in r.log]
        if not logs:
            continue
        steps = sorted(set.intersection(*[set(log["step"].tolist()) for log in logs]))
        if not steps:
            continue
        values = np.array([[log["loss"][list(log["step"]).index(s)] for s in steps] for log in logs])
        mean, sd = values.mean(0), (values.std(0, ddof=1) if len(logs) > 1 else np.zeros(len(steps)))
        ax.plot(steps, mean, label=f"{arm} (n={len(logs)})")
        ax.fill_between(steps, mean - sd, mean + sd, alpha=0.25)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.legend(fontsize=8)
    _save(fig, path)


def plot_adaptation(summary: dict[str, Any], path: Path) -> None:
    """Dice against adaptation steps K per region, one line per arm (band = ± sd over seeds)."""
    adapt, regions = summary["adaptation"], summary["regions"]
    fig = _figure(3.2 * len(regions), 3.2)
    for j, region in enumerate(regions):
        ax = fig.add_subplot(1, len(regions), j + 1)
        for arm, a in adapt.items():
            mean = np.array([np.nan if row[j] is None else row[j] for row in a["dice_mean"]])
            sd = np.nan_to_num(np.array([np.nan if row[j] is None else row[j] for row in a["dice_sd"]]))
            ax.plot(a["steps"], mean, marker="o", label=arm)
            ax.fill_between(a["steps"], mean - sd, mean + sd, alpha=0.2)
        ax.set_xlabel("adaptation steps K")
        ax.set_title(f"{region} Dice (%)", fontsize=9)
        if j == 0:
            ax.legend(fontsize=7)
    _save(fig, path)


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
    plot_training_curves(spec, records, study_dir / "training_curves.png")
    if summary["adaptation"]:
        plot_adaptation(summary, study_dir / "adaptation_curves.png")
    return summary
