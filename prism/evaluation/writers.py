"""Report files: summary JSON, per-case CSV, Markdown table in the papers' layout, PNG heatmap of Dice.

The files of one report are written as one set (:func:`write_file_set`): every file is written to a temporary
file beside its target first, and only when all are written are they renamed over the old ones, so a failure
(a full disk, a plotting error) leaves the previous set whole.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from ..atomic import atomic_path, ensure_folder, storage_error
from ..modalities import display_name
from .results import AVERAGING, AdaptationResult, EvalReport, mean_over_cases, mean_over_combinations

JSON_NAME, CSV_NAME, MARKDOWN_NAME, HEATMAP_NAME = "eval.json", "eval_cases.csv", "eval.md", "eval_dice.png"
REPORT_FILES = (JSON_NAME, CSV_NAME, MARKDOWN_NAME, HEATMAP_NAME)


def write_file_set(folder: Path, writers: Mapping[str, Callable[[Path], object]], *,
                   members: Sequence[str] = ()) -> list[Path]:
    """Write the files of one set into ``folder``: all of them, or (on any failure) none.

    Each ``writers[name](tmp)`` writes its file's whole content to a temporary path beside ``folder/name``
    (:func:`prism.atomic.atomic_path`); the renames happen only after every file was written, the first name
    last (so a reader that waits for it sees the complete set). Files named in ``members`` but not written this
    time belong to an older set and are removed after the renames.

    Returns:
        The paths written, in the order of ``writers``.

    Raises:
        StorageError: a file could not be written (full disk, read-only folder); the old set is left whole.
    """
    folder = ensure_folder(folder)
    paths = [folder / name for name in writers]
    with contextlib.ExitStack() as stack:
        for path, write in zip(paths, writers.values(), strict=True):
            suffix = path.suffix if path.suffix == ".png" else ""
            write(stack.enter_context(atomic_path(path, suffix=suffix)))
    for name in members:
        stale = folder / name
        if name not in writers and stale.exists():
            try:
                stale.unlink()
            except OSError as exc:
                raise storage_error(stale, exc, "cannot remove the previous report's file") from None
    return paths


def _text(content: str) -> Callable[[Path], object]:
    return lambda tmp: tmp.write_text(content, encoding="utf-8")


def _fmt(value: float, digits: int = 2) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def _settings_line(report: EvalReport) -> str:
    s = report.settings
    window = s.get("window")
    inference = (f"sliding window {'x'.join(map(str, window))}, overlap {s.get('overlap')}, Gaussian blending"
                 if window else "whole volume")
    if s.get("tta") == "mirror":
        inference += ", probabilities averaged over the 8 mirrored inputs"
    parts = [f"{len(report.case_ids)} cases", inference]
    if _counts_differ(report):
        parts.append("a combination is scored for a case only when the case has all of its modalities "
                     "(Cases column)")
    if s.get("et_postprocess_voxels"):
        parts.append(f"ET post-processing (< {s['et_postprocess_voxels']} voxels = none)")
    if report.hd95 is not None:
        empty = s.get("hd95_empty")
        parts.append(f"HD95 in mm, {hd95_definition(s.get('hd95_convention'))}; both empty = 0, one empty = "
                     + ("left out" if empty is None or math.isnan(empty) else f"{empty:.2f}"))
    return "; ".join(parts)


def hd95_definition(convention: str | None) -> str:
    """One phrase naming an HD95 convention for the reports."""
    if convention == "brats2023":
        return "BraTS 2023 challenge definition (surface elements weighted by area)"
    return "MONAI's definition (surface voxels, unweighted)"


def checkpoint_line(record: Mapping[str, object] | None) -> str:
    """``checkpoint last.pt, step 300, sha256 1a2b3c4d...`` (or that none is recorded)."""
    if not record:
        return "checkpoint not recorded"
    return f"checkpoint {record.get('file')}, step {record.get('step')}, sha256 {str(record.get('sha256'))[:12]}"


def _counts_differ(report: EvalReport) -> bool:
    """True when some combination was scored on fewer than all the report's cases."""
    return bool((report.cases_per_combination() != len(report.case_ids)).any())


def metrics_table(report: EvalReport) -> str:
    """Markdown: one row per combination (availability marks, name), Dice (%) then HD95 (mm) per region, mean.

    A Cases column (cases scored per combination) is added when not every combination was scored on every case.
    """
    dice = report.mean_dice() * 100
    hd = report.mean_hd95()
    marks = [display_name(m) for m in report.modalities] if report.combination_masks else []
    counts = report.cases_per_combination() if _counts_differ(report) else None
    cols = ["#", "Modalities", *marks, *(["Cases"] if counts is not None else []),
            *(f"{r} Dice" for r in report.regions)]
    if hd is not None:
        cols += [f"{r} HD95" for r in report.regions]
    align = ["---:", ":---", *([":-:"] * len(marks)), *(["---:"] * (len(cols) - 2 - len(marks)))]
    extra = [""] if counts is not None else []
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join(align) + "|"]
    for i, name in enumerate(report.combinations):
        row = [str(i), name]
        if marks:
            row += ["●" if on else "○" for on in report.combination_masks[i]]
        if counts is not None:
            row.append(str(int(counts[i])))
        row += [_fmt(v) for v in dice[i]]
        if hd is not None:
            row += [_fmt(v) for v in hd[i]]
        lines.append("| " + " | ".join(row) + " |")
    mean_row = ["", "**Mean**", *([""] * len(marks)), *extra, *(f"**{_fmt(v)}**" for v in _nanmean0(dice))]
    if hd is not None:
        mean_row += [f"**{_fmt(v)}**" for v in _nanmean0(hd)]
    lines.append("| " + " | ".join(mean_row) + " |")
    return "\n".join(lines) + "\n"


def _nanmean0(values: np.ndarray) -> np.ndarray:
    """The last row of every table: the mean over the combinations of the per-combination means above it
    (:func:`~prism.evaluation.results.combination_mean` in two steps)."""
    return mean_over_combinations(values)


def adaptation_markdown(result: AdaptationResult) -> str:
    """Markdown: Dice per combination and region before and after fine-tuning, on the site's query cases."""
    before, after = result.before.mean_dice() * 100, result.after.mean_dice() * 100
    regions = result.before.regions
    k = result.steps
    cols = ["#", "Modalities", *(f"{r} Dice (0 steps)" for r in regions), *(f"{r} Dice ({k} steps)" for r in regions)]
    lines = [
        f"## Fast adaptation to site '{result.site}'",
        "",
        f"{k} fine-tuning steps (lr {result.lr:g}) on {len(result.support_cases)} of its cases "
        f"({', '.join(result.support_cases)}); evaluated on the other {len(result.query_cases)}.",
        "",
        "| " + " | ".join(cols) + " |",
        "|---:|:---|" + "---:|" * (2 * len(regions)),
    ]
    for i, name in enumerate(result.before.combinations):
        lines.append("| " + " | ".join([str(i), name, *(_fmt(v) for v in before[i]), *(_fmt(v) for v in after[i])])
                     + " |")
    means = [*(f"**{_fmt(v)}**" for v in _nanmean0(before)), *(f"**{_fmt(v)}**" for v in _nanmean0(after))]
    lines.append("| | **Mean** | " + " | ".join(means) + " |")
    return "\n".join(lines) + "\n"


def lesion_table(report: EvalReport) -> str:
    """Markdown: lesion-wise Dice (%) and HD95 (mm) per combination and region (BraTS 2023+ ranking metrics)."""
    arrays = report.lesion_arrays()
    means = {k: _nanmean_cases(v) * (100 if k == "lesion_dice" else 1) for k, v in arrays.items()}
    cols = ["#", "Modalities", *(f"{r} lesion {'Dice' if k == 'lesion_dice' else 'HD95'}"
                                 for k in means for r in report.regions)]
    lines = ["## Lesion-wise metrics (BraTS 2023 challenge definition: reference components merged by a 3-voxel "
             "dilation, lesions of at most 50 mm^3 left out, predicted components touching a dilated lesion "
             "matched; a missed lesion or a false positive scores Dice 0 and HD95 374 mm)", "",
             "| " + " | ".join(cols) + " |", "|---:|:---|" + "---:|" * (len(cols) - 2)]
    for i, name in enumerate(report.combinations):
        lines.append("| " + " | ".join([str(i), name, *(_fmt(v) for m in means.values() for v in m[i])]) + " |")
    lines.append("| | **Mean** | " + " | ".join(f"**{_fmt(v)}**" for m in means.values() for v in _nanmean0(m))
                 + " |")
    return "\n".join(lines) + "\n"


def _nanmean_cases(values: np.ndarray) -> np.ndarray:
    return mean_over_cases(values)


def report_markdown(report: EvalReport, title: str | None = None) -> str:
    """eval.md: the settings, the per-combination table with its mean row, lesion-wise and adaptation tables."""
    parts = [f"# {title or 'Evaluation over every modality combination'}", "",
             _settings_line(report) + f"; {checkpoint_line(report.checkpoint)}.", "",
             f"Dice in %, HD95 in mm; last row: the {AVERAGING}.", "",
             metrics_table(report)]
    if report.lesion_arrays():
        parts += ["", lesion_table(report)]
    if report.adaptation is not None:
        parts += ["", adaptation_markdown(report.adaptation)]
    return "\n".join(parts)


def case_rows(report: EvalReport) -> tuple[list[str], list[list[object]]]:
    """Header and rows of the per-case CSV: one row per case and combination (empty cells: not scored)."""
    header = ["case_id", "site", "combination_index", "combination", *(f"{r}_dice" for r in report.regions)]
    if report.hd95 is not None:
        header += [f"{r}_hd95_mm" for r in report.regions]
    lesion = report.lesion_arrays()
    header += [f"{r}_{key}" + ("_mm" if key.endswith("hd95") else "") for key in lesion for r in report.regions]
    rows: list[list[object]] = []
    for c, cid in enumerate(report.case_ids):
        for i, name in enumerate(report.combinations):
            row: list[object] = [cid, report.sites[c] if report.sites else "", i, name]
            row += ["" if math.isnan(v) else f"{v:.6f}" for v in report.dice[c, i]]
            if report.hd95 is not None:
                row += ["" if math.isnan(v) else f"{v:.4f}" for v in report.hd95[c, i]]
            for values in lesion.values():
                row += ["" if math.isnan(v) else f"{v:.6f}" for v in values[c, i]]
            rows.append(row)
    return header, rows


def cases_csv(report: EvalReport) -> str:
    """The per-case CSV (:func:`case_rows`) as text."""
    header, rows = case_rows(report)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


def heatmap_figure(report: EvalReport, title: str = "Dice (%) per region and combination") -> object:
    """PNG heatmap of mean Dice: combinations as rows, regions as columns (a matplotlib Figure, Agg canvas)."""
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    per_combination = report.mean_dice() * 100
    values = np.vstack([per_combination, _nanmean0(per_combination)[None]])
    rows, cols = values.shape
    names = [f"{i} {n}" for i, n in enumerate(report.combinations)]
    if _counts_differ(report):
        names = [f"{name} (n={int(k)})" for name, k in zip(names, report.cases_per_combination(), strict=True)]
    fig = Figure(figsize=(1.6 + 1.1 * cols, 1.0 + 0.38 * rows), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="lightgrey")  # NaN: no case scored
    image = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, vmin=0, vmax=100, aspect="auto")
    ax.set_xticks(range(cols), list(report.regions))
    ax.set_yticks(range(rows), [*names, "Mean"], fontsize=8)
    ax.axhline(rows - 1.5, color="white", linewidth=2)
    for i in range(rows):
        for j in range(cols):
            v = values[i, j]
            ax.text(j, i, _fmt(v, 1), ha="center", va="center", fontsize=7, color="white" if v < 60 else "black")
    ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.08)
    fig.tight_layout()
    return fig


def write_report(report: EvalReport, out_dir: Path, *, heatmap: bool = True) -> list[Path]:
    """Write eval.json, eval_cases.csv, eval.md and (``heatmap``) eval_dice.png into ``out_dir`` as one set.

    A failure leaves the previous set whole (:func:`write_file_set`); without ``heatmap`` an older
    eval_dice.png is removed, since it would not show this report.

    Returns:
        The paths written.

    Raises:
        StorageError: a file could not be written (the old files are kept).
    """
    writers: dict[str, Callable[[Path], object]] = {
        JSON_NAME: _text(json.dumps(report.to_dict(), indent=2) + "\n"),
        CSV_NAME: _text(cases_csv(report)),
        MARKDOWN_NAME: _text(report_markdown(report)),
    }
    if heatmap:
        fig = heatmap_figure(report)
        writers[HEATMAP_NAME] = lambda tmp: fig.savefig(tmp, format="png")  # type: ignore[attr-defined]
    return write_file_set(Path(out_dir), writers, members=REPORT_FILES)
