"""Evaluation of cases that lack a modality: only the combinations a case can supply are scored; reports and
prism-eval (which loads only config.yaml + last.pt, no train split needed) show per-combination case counts."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import FAST
from prism.backbone import Backbone
from prism.cli import evaluate as eval_cli
from prism.cli import train as train_cli
from prism.data.cache_format import BRATS_LABELS
from prism.data.cache_reader import CacheReader
from prism.data.cache_writer import CacheWriter
from prism.data_tools.synthetic import SynthSettings, make_case
from prism.evaluation.compare import compare_reports
from prism.evaluation.metrics import BRATS_REGIONS, region_dice
from prism.evaluation.options import EvalOptions
from prism.evaluation.report import EvalReport, evaluate
from prism.evaluation.writers import report_markdown, write_report
from prism.modalities import BRATS_MODALITIES, enumerate_combinations
from prism.outputs import SegOutput

CPU = torch.device("cpu")
FULL, LACKING = "full_case", "no_t1ce_case"
T1CE = BRATS_MODALITIES.index("t1ce")
COMBOS = enumerate_combinations(BRATS_MODALITIES)
WITH_T1CE = np.array([c.mask[T1CE] for c in COMBOS])


@pytest.fixture(scope="module")
def missing_cache(tmp_path_factory):
    """Two cases, only a 'test' split (no train split); the second case has no T1ce."""
    path = tmp_path_factory.mktemp("missing") / "missing.h5"
    settings = SynthSettings(cases=2, shape=(16, 16, 16), seed=5)
    with CacheWriter(path, modalities=BRATS_MODALITIES, labels=BRATS_LABELS, seed=0) as writer:
        for i, case_id in enumerate((FULL, LACKING)):
            image, label, site = make_case(i, settings)
            available = [True] * len(BRATS_MODALITIES)
            if case_id == LACKING:
                image[T1CE] = 0
                available[T1CE] = False
            writer.add_case(case_id, image, label, availability=available, site=site)
        writer.set_split("test", [FULL, LACKING])
    return path


class RecordingOracle(Backbone):
    """Predicts one fixed label map whatever the input; records every mask it is given."""

    def __init__(self, modalities, label: torch.Tensor) -> None:
        super().__init__(modalities, 4)
        self.register_buffer("label", label.long())
        self.masks: list[torch.Tensor] = []

    def forward(self, image, mask):
        self.masks.append(mask.clone())
        onehot = F.one_hot(self.label, 4).movedim(-1, 0).float() * 10
        return SegOutput(logits=onehot.expand(image.shape[0], *onehot.shape))


def test_combinations_a_case_cannot_supply_are_not_run_and_left_out_of_the_means(missing_cache, tmp_path):
    reader = CacheReader(missing_cache)
    _, full_label = reader.read_case(FULL)
    _, lacking_label = reader.read_case(LACKING)
    model = RecordingOracle(reader.modalities, torch.from_numpy(full_label))
    report = evaluate(model, reader, [FULL, LACKING], device=CPU, options=EvalOptions(combos_per_pass=4))

    masks = torch.cat(model.masks)
    assert masks.shape[0] == 15 + 7  # every combination of the full case, the 7 without T1ce of the other
    assert masks.any(1).all(), "an all-False mask was predicted"
    assert int(masks[:, T1CE].sum()) == 8  # T1ce only ever asked of the full case

    assert (report.dice[0] == 1).all() and np.isfinite(report.dice[0]).all()
    assert np.isnan(report.dice[1, WITH_T1CE]).all() and np.isnan(report.hd95[1, WITH_T1CE]).all()
    d_lacking = region_dice(torch.from_numpy(full_label)[None], torch.from_numpy(lacking_label), BRATS_REGIONS,
                            4)[0].numpy()
    assert (d_lacking < 1).any()  # the two phantoms differ, so including a row would move the mean
    np.testing.assert_allclose(report.dice[1, ~WITH_T1CE], np.broadcast_to(d_lacking, (7, 3)), rtol=1e-6)
    expected = np.where(WITH_T1CE[:, None], 1.0, (1 + d_lacking) / 2)
    np.testing.assert_allclose(report.mean_dice(), expected, rtol=1e-6)
    assert report.cases_per_combination().tolist() == [1 if w else 2 for w in WITH_T1CE]

    write_report(report, tmp_path)
    data = json.loads((tmp_path / "eval.json").read_text())
    assert [c["num_cases"] for c in data["combinations"]] == report.cases_per_combination().tolist()
    t1ce_only = next(c.name for c in COMBOS if c.mask == (False, True, False, False))
    assert data["cases"][LACKING]["combinations"][t1ce_only]["dice"] == {"WT": None, "TC": None, "ET": None}
    assert data["mean"]["dice"]["WT"] == pytest.approx(expected[:, 0].mean())
    back = EvalReport.from_dict(data)
    np.testing.assert_array_equal(back.scored, report.scored)
    np.testing.assert_allclose(back.mean_dice(), report.mean_dice())

    with (tmp_path / "eval_cases.csv").open() as f:
        rows = [r for r in csv.DictReader(f) if r["case_id"] == LACKING]
    assert [r["WT_dice"] == "" for r in rows] == WITH_T1CE.tolist()

    md = [line for line in (tmp_path / "eval.md").read_text().splitlines() if line.startswith("|")]
    header = [c.strip() for c in md[0].split("|")[1:-1]]
    col = header.index("Cases")
    assert [int(row.split("|")[1:-1][col]) for row in md[2:-1]] == report.cases_per_combination().tolist()
    assert f"{expected[:, 0].mean() * 100:.2f}" in md[-1]
    assert "only when the case has all of its modalities" in (tmp_path / "eval.md").read_text()

    diffs = compare_reports(report, report, samples=50, per_combination=True)
    counts = {d.combination: d.cases for d in diffs if d.metric == "dice" and d.region == "WT"}
    assert counts[t1ce_only] == 1 and counts[None] == 2 and all(d.diff == 0 for d in diffs if d.cases)
    reader.close()


def test_markdown_has_no_cases_column_when_every_case_has_every_modality(missing_cache):
    reader = CacheReader(missing_cache)
    _, label = reader.read_case(FULL)
    report = evaluate(RecordingOracle(reader.modalities, torch.from_numpy(label)), reader, [FULL], device=CPU,
                      options=EvalOptions(compute_hd95=False))
    reader.close()
    assert report.cases_per_combination().tolist() == [1] * 15
    assert "Cases" not in report_markdown(report)


def test_compare_leaves_out_pairs_scored_in_one_report_only():
    dice_a = np.array([[[0.5], [0.7]], [[0.2], [np.nan]]])  # case 1 lacks combination 1 in A
    dice_b = np.array([[[0.6], [0.9]], [[0.2], [0.8]]])
    common = {"modalities": ("a",), "regions": ("WT",), "combinations": ["x", "y"], "case_ids": ["c0", "c1"]}
    a, b = EvalReport(dice=dice_a, **common), EvalReport(dice=dice_b, **common)
    (mean,) = compare_reports(a, b, samples=20)
    # c1's "y" is scored in B only: left out of both. Per combination, the mean over the cases both scored
    # (x: B (0.6 + 0.2) / 2, A (0.5 + 0.2) / 2; y: B 0.9, A 0.7), then the mean over the combinations
    assert mean.cases == 2
    assert mean.mean_b == pytest.approx((0.4 + 0.9) / 2 * 100) and mean.mean_a == pytest.approx((0.35 + 0.7) / 2 * 100)
    assert mean.diff == pytest.approx(((0.4 - 0.35) + (0.9 - 0.7)) / 2 * 100)


def test_prism_eval_needs_no_train_split(capsys, tiny_cache, missing_cache, tmp_path):
    run = tmp_path / "run"
    assert train_cli.main(["--data", str(tiny_cache), "-o", str(run), *FAST, "train.steps=1", "--no-eval"]) == 0
    capsys.readouterr()
    reader = CacheReader(missing_cache)
    assert list(reader.splits) == ["test"]
    reader.close()
    assert eval_cli.main([str(run), "--data", str(missing_cache), "--no-heatmap"]) == 0, capsys.readouterr().err
    data = json.loads((run / "eval.json").read_text())
    assert list(data["cases"]) == [FULL, LACKING]
    assert [c["num_cases"] for c in data["combinations"]] == [1 if w else 2 for w in WITH_T1CE]
    assert "Cases" in (run / "eval.md").read_text()
