"""One mean over combinations: eval.md, eval.json, prism-eval compare and the study report print the same headline
numbers for the same runs when some cases lack a modality (the averaging that differed between them)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from prism.cli import evaluate as eval_cli
from prism.evaluation.results import EvalReport
from prism.evaluation.writers import write_report
from prism.modalities import BRATS_MODALITIES, enumerate_combinations
from prism.study.report import write_study_report
from prism.study.runner import SPEC_NAME
from prism.study.spec import StudySpec, spec_to_yaml

COMBOS = enumerate_combinations(BRATS_MODALITIES)
T1CE = BRATS_MODALITIES.index("t1ce")


def _run(rng: np.random.Generator, offset: float) -> EvalReport:
    dice = np.clip(rng.uniform(0.3, 0.9, (6, 15, 3)) + offset, 0, 1)
    for case in (0, 1, 2):  # half the cases lack T1ce: not scored on the 8 combinations that use it
        dice[case, [i for i, c in enumerate(COMBOS) if c.mask[T1CE]]] = np.nan
    return EvalReport(modalities=tuple(BRATS_MODALITIES), regions=("WT", "TC", "ET"),
                      combinations=[c.name for c in COMBOS], case_ids=[f"c{i}" for i in range(6)], dice=dice,
                      combination_masks=[c.mask for c in COMBOS])


def _by_hand(dice: np.ndarray) -> np.ndarray:
    """Per combination the mean over the cases scored on it, then the mean over the 15 combinations (%)."""
    per_combination = [[np.mean([v for v in dice[:, c, r] if not np.isnan(v)]) for r in range(3)]
                       for c in range(dice.shape[1])]
    return np.mean(per_combination, axis=0) * 100


def _md_mean_row(path) -> list[float]:
    row = next(line for line in path.read_text().splitlines() if "**Mean**" in line)
    return [float(v) for v in re.findall(r"\*\*([0-9.]+)\*\*", row)]


def test_eval_md_eval_json_compare_and_the_study_report_print_one_mean(tmp_path, capsys):
    rng = np.random.default_rng(0)
    a, b = _run(rng, 0.0), _run(rng, 0.05)
    expected = {"base": _by_hand(a.dice), "new": _by_hand(b.dice)}
    case_first = np.nanmean(np.nanmean(a.dice, axis=1), axis=0) * 100
    assert np.abs(case_first - expected["base"]).max() > 0.05  # the other order would give other numbers
    spec = StudySpec.model_validate({"name": "means", "data": {"cache": str(tmp_path / "none.h5")},
                                     "arms": {"base": {}, "new": {}}, "seeds": [0],
                                     "report": {"bootstrap_samples": 200}})
    (tmp_path / SPEC_NAME).write_text(spec_to_yaml(spec))
    folders = {arm: tmp_path / "runs" / arm / "seed-0" for arm in ("base", "new")}
    for arm, report in (("base", a), ("new", b)):
        write_report(report, folders[arm], heatmap=False)
        md = _md_mean_row(folders[arm] / "eval.md")
        assert md == pytest.approx(np.round(expected[arm], 2), abs=0.006)  # eval.md prints two decimals
        mean = json.loads((folders[arm] / "eval.json").read_text())["mean"]["dice"]
        assert [mean[r] * 100 for r in ("WT", "TC", "ET")] == pytest.approx(expected[arm])
    summary = write_study_report(tmp_path)
    for arm in ("base", "new"):
        assert summary["arms"][arm]["dice_mean"] == pytest.approx(expected[arm], abs=1e-4)
    assert eval_cli.main(["compare", str(folders["base"]), str(folders["new"]), "--samples", "200", "--json"]) == 0
    rows = {d["region"]: d for d in json.loads(capsys.readouterr().out)["differences"] if d["metric"] == "dice"}
    for i, region in enumerate(("WT", "TC", "ET")):
        assert rows[region]["mean_a"] == pytest.approx(expected["base"][i])
        assert rows[region]["mean_b"] == pytest.approx(expected["new"][i])
        assert rows[region]["diff"] == pytest.approx(summary["arms"]["new"]["vs_reference"]["dice"]["difference"][i],
                                                     abs=1e-4)
