"""evaluate() on a cache and the report files: values, layout, round trip; fast adaptation in the same report."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from prism.backbone import Backbone
from prism.data.cache_reader import CacheReader
from prism.data_tools.synthetic import SynthSettings, write_synthetic_cache
from prism.errors import DataError
from prism.evaluation.adaptation import AdaptationSettings, fine_tune_rule, load_support, site_cases
from prism.evaluation.hausdorff import BRATS_EMPTY_HD95
from prism.evaluation.inference import predict_combinations
from prism.evaluation.metrics import BRATS_REGIONS, region_dice
from prism.evaluation.options import EvalOptions
from prism.evaluation.report import EvalReport, evaluate, write_report
from prism.modalities import combination_masks
from prism.outputs import SegOutput
from prism.registry import create_backbone

CPU = torch.device("cpu")


class Oracle(Backbone):
    """Predicts a fixed label map (the reference, or another) whatever the input."""

    def __init__(self, modalities, label: torch.Tensor) -> None:
        super().__init__(modalities, 4)
        self.register_buffer("label", label.long())

    def forward(self, image, mask):
        onehot = F.one_hot(self.label, 4).movedim(-1, 0).float() * 10
        return SegOutput(logits=onehot.expand(image.shape[0], *onehot.shape))


@pytest.fixture(scope="module")
def sites_cache(tmp_path_factory):
    path = tmp_path_factory.mktemp("sites") / "sites.h5"
    write_synthetic_cache(str(path), SynthSettings(cases=6, shape=(16, 16, 16), seed=5, sites=2), test_fraction=0.5)
    return CacheReader(path)


def test_oracle_scores_perfectly_and_empty_prediction_gets_brats_conventions(sites_cache):
    reader = sites_cache
    case = reader.split("test")[0]
    _, label = reader.read_case(case)
    label = torch.from_numpy(label)
    report = evaluate(Oracle(reader.modalities, label), reader, [case], device=CPU)
    assert report.dice.shape == report.hd95.shape == (1, 15, 3)
    assert (report.dice == 1).all() and (report.hd95 == 0).all()
    empty = evaluate(Oracle(reader.modalities, torch.zeros_like(label)), reader, [case], device=CPU)
    has = [bool((label == k).any()) for k in (2, 1, 3)]  # the synthetic tumour has every region
    assert all(has)
    assert (empty.dice == 0).all() and (empty.hd95 == BRATS_EMPTY_HD95).all()
    left_out = evaluate(Oracle(reader.modalities, torch.zeros_like(label)), reader, [case], device=CPU,
                        options=EvalOptions(hd95_empty=math.nan))
    assert np.isnan(left_out.hd95).all() and np.isnan(left_out.mean_hd95()).all()


def test_report_values_equal_the_metrics_of_a_per_combination_loop(sites_cache):
    reader = sites_cache
    torch.manual_seed(0)
    model = create_backbone("multi_unet", reader.modalities, 4, width=4, depth=3).eval()
    cases = list(reader.split("test"))[:2]
    options = EvalOptions(compute_hd95=False, et_postprocess_voxels=5)
    report = evaluate(model, reader, cases, device=CPU, options=options)
    masks = combination_masks(reader.modalities)
    for c, case in enumerate(cases):
        image, label = reader.read_case(case)
        labels = torch.cat([predict_combinations(model, torch.from_numpy(image), masks[i:i + 1], device=CPU,
                                                 options=EvalOptions(combos_per_pass=1)) for i in range(15)])
        expected = region_dice(labels, torch.from_numpy(label), BRATS_REGIONS, 4, et_postprocess_voxels=5)
        # equal up to a few near-tie voxels: an untrained model's class scores differ in the last float bits
        # between a batch of 15 combinations and one at a time (a wrong combination order is off by far more)
        np.testing.assert_allclose(report.dice[c], expected.numpy(), rtol=0, atol=1e-4)
    assert report.hd95 is None and report.sites == [reader.info(c).site for c in cases]


def test_report_files_are_written_and_parse(sites_cache, tmp_path):
    reader = sites_cache
    torch.manual_seed(1)
    model = create_backbone("multi_unet", reader.modalities, 4, width=4, depth=3).eval()
    cases = list(reader.split("test"))
    report = evaluate(model, reader, cases, device=CPU)
    paths = write_report(report, tmp_path)
    assert sorted(p.name for p in paths) == ["eval.json", "eval.md", "eval_cases.csv", "eval_dice.png"]
    data = json.loads((tmp_path / "eval.json").read_text())
    assert [c["index"] for c in data["combinations"]] == list(range(15)) and data["num_cases"] == len(cases)
    mean = report.mean_dice()
    assert data["combinations"][14]["dice"]["ET"] == pytest.approx(mean[14, 2])
    assert data["mean"]["hd95"]["WT"] == pytest.approx(report.mean_hd95()[:, 0].mean())
    back = EvalReport.from_dict(data)
    np.testing.assert_allclose(back.dice, report.dice)
    np.testing.assert_allclose(back.hd95, report.hd95)
    assert back.case_ids == cases and back.sites == report.sites
    with (tmp_path / "eval_cases.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 15 * len(cases)
    assert rows[16]["case_id"] == cases[1] and rows[16]["combination"] == report.combinations[1]
    assert float(rows[16]["TC_dice"]) == pytest.approx(report.dice[1, 1, 1], abs=1e-6)
    assert float(rows[16]["WT_hd95_mm"]) == pytest.approx(report.hd95[1, 1, 0], abs=1e-4)
    md = (tmp_path / "eval.md").read_text().splitlines()
    table = [line for line in md if line.startswith("|")]
    assert table[0].split("|")[1:-1] == [" # ", " Modalities ", " FLAIR ", " T1ce ", " T1 ", " T2 ", " WT Dice ",
                                         " TC Dice ", " ET Dice ", " WT HD95 ", " TC HD95 ", " ET HD95 "]
    assert len(table) == 2 + 15 + 1 and "**Mean**" in table[-1]
    assert table[2].split("|")[2:7] == [" T2 ", " ○ ", " ○ ", " ○ ", " ● "]
    assert f"{mean[:, 0].mean() * 100:.2f}" in table[-1]
    assert (tmp_path / "eval_dice.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_fast_adaptation_support_query_and_report(sites_cache, tmp_path):
    reader = sites_cache
    cases = list(reader.split("test"))
    sites = [reader.info(c).site for c in cases]
    site = max(set(sites), key=sites.count)  # a site with at least two evaluated cases
    members = [c for c in cases if reader.info(c).site == site]
    assert len(members) >= 2
    settings = AdaptationSettings(site=site, support_cases=1, steps=3, lr=0.05, patch_size=(8, 8, 8))
    support, query = site_cases(reader, cases, settings)
    assert support == members[:1] and query == members[1:]
    torch.manual_seed(2)
    model = create_backbone("multi_unet", reader.modalities, 4, width=4, depth=3).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    adapted = fine_tune_rule(model, load_support(reader, support), settings, device=CPU)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # the caller's model is untouched
    assert any(not torch.equal(v, adapted.state_dict()[k]) for k, v in before.items())
    zero = fine_tune_rule(model, load_support(reader, support), AdaptationSettings(site=site, steps=0), device=CPU)
    assert all(torch.equal(v, zero.state_dict()[k]) for k, v in before.items())

    dice_only = EvalOptions(compute_hd95=False)
    report = evaluate(model, reader, cases, device=CPU, options=dice_only, adaptation=settings)
    a = report.adaptation
    assert a is not None and a.query_cases == query
    np.testing.assert_allclose(a.before.dice, report.subset(query).dice)  # no adaptation = the plain evaluation
    expected_after = evaluate(adapted, reader, query, device=CPU, options=dice_only)
    np.testing.assert_allclose(a.after.dice, expected_after.dice)
    write_report(report, tmp_path, heatmap=False)
    data = json.loads((tmp_path / "eval.json").read_text())
    assert data["adaptation"]["steps"] == 3 and data["adaptation"]["query_cases"] == query
    assert EvalReport.from_dict(data).adaptation.after.dice.shape == (len(query), 15, 3)
    assert f"## Fast adaptation to site '{site}'" in (tmp_path / "eval.md").read_text()


def test_adaptation_needs_enough_cases_of_the_site(sites_cache):
    with pytest.raises(DataError, match="site 'site9' has 0 cases"):
        site_cases(sites_cache, sites_cache.case_ids, AdaptationSettings(site="site9"))
