"""The study report from fake run folders: flags (collapse judged from predictions too), verdicts, term shares,
conventions, the training-curve components, and the files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from prism.engine.metrics_log import CsvLog
from prism.evaluation.results import EvalReport
from prism.evaluation.writers import write_report
from prism.modalities import BRATS_MODALITIES, enumerate_combinations
from prism.study.report import write_study_report
from prism.study.runner import SPEC_NAME
from prism.study.spec import StudySpec, spec_to_yaml

# ---- fake run folders in the format prism writes -----------------------------------------------------------

COMBOS = [c.name for c in enumerate_combinations(BRATS_MODALITIES)]
CASES = [f"case{i}" for i in range(4)]


def _fake_run(folder, dice, losses, hd=None):
    report = EvalReport(modalities=tuple(BRATS_MODALITIES), regions=("WT", "TC", "ET"), combinations=COMBOS,
                        case_ids=CASES, dice=dice, hd95=hd, sites=["site0"] * len(CASES))
    write_report(report, folder, heatmap=False)
    log = CsvLog(folder / "train_log.csv")
    for i, loss in enumerate(losses):
        log.write({"step": (i + 1) * 10, "lr": 0.01, "loss": loss, "fuse": loss})


def _spec(tmp_path, seeds=(0, 1, 2)):
    spec = StudySpec.model_validate({"name": "fake", "data": {"cache": str(tmp_path / "none.h5")},
                                     "arms": {"base": {}, "new": {}}, "seeds": list(seeds),
                                     "report": {"bootstrap_samples": 500}})
    (tmp_path / SPEC_NAME).write_text(spec_to_yaml(spec))
    return spec


def test_report_flags_collapsed_and_diverged_runs_and_leaves_them_out(tmp_path):
    _spec(tmp_path)
    rng = np.random.default_rng(1)
    good = [0.9, 0.6, 0.4, 0.3]
    values = {}
    for arm, base in (("base", 0.6), ("new", 0.7)):
        for seed in range(3):
            dice = np.clip(rng.normal(base, 0.05, (4, 15, 3)), 0, 1)
            hd = rng.uniform(2, 10, (4, 15, 3))
            values[(arm, seed)] = dice
            losses = good
            if (arm, seed) == ("new", 1):
                dice = np.zeros((4, 15, 3))  # constant background prediction
            if (arm, seed) == ("new", 2):
                losses = [0.9, 0.7, float("nan"), float("nan")]
            _fake_run(tmp_path / "runs" / arm / f"seed-{seed}", dice, losses, hd)
    summary = write_study_report(tmp_path)
    status = {(r["arm"], r["seed"]): r["status"] for r in summary["runs"]}
    assert status[("new", 1)] == "collapsed" and status[("new", 2)] == "diverged"
    assert sum(s == "ok" for s in status.values()) == 4
    new = summary["arms"]["new"]
    assert new["seeds_used"] == [0]
    expected = np.nanmean(np.nanmean(values[("new", 0)], axis=0), axis=0) * 100
    assert np.allclose(new["dice_mean"], expected, atol=1e-4)
    base = np.array([np.nanmean(np.nanmean(values[("base", s)], axis=0), axis=0) * 100 for s in range(3)])
    assert np.allclose(summary["arms"]["base"]["dice_mean"], base.mean(0), atol=1e-4)
    assert np.allclose(summary["arms"]["base"]["dice_sd"], base.std(0, ddof=1), atol=1e-4)
    diff = new["vs_reference"]["dice"]
    assert diff["seeds"] == [0]  # only the seed where both arms' runs are usable is paired
    assert np.allclose(diff["difference"], expected - base[0], atol=1e-4)
    md = (tmp_path / "report.md").read_text()
    assert "new/seed-1: collapsed" in md and "new/seed-2: diverged" in md
    for name in ("report.json", "report.csv", "dice_per_combination.png", "training_curves.png"):
        assert (tmp_path / name).stat().st_size > 0
    assert json.loads((tmp_path / "report.json").read_text())["reference"] == "base"
    rows = (tmp_path / "report.csv").read_text().splitlines()
    assert rows[0].startswith("arm,seed,status,region,dice") and len(rows) == 1 + 6 * 3


def test_report_flags_a_loss_stuck_near_its_start_with_nothing_learnt(tmp_path):
    _spec(tmp_path, seeds=(0, 1))
    rng = np.random.default_rng(2)
    for seed in (0, 1):
        _fake_run(tmp_path / "runs" / "base" / f"seed-{seed}", rng.uniform(0.3, 0.9, (4, 15, 3)),
                  [1.0, 0.7, 0.5, 0.4, 0.4, 0.3])
    stuck = [1.0, 0.99, 0.98, 0.99, 1.0, 0.98]
    _fake_run(tmp_path / "runs" / "new" / "seed-0", rng.uniform(0.0, 0.16, (4, 15, 3)), stuck)  # mean Dice ~8%
    _fake_run(tmp_path / "runs" / "new" / "seed-1", rng.uniform(0.3, 0.9, (4, 15, 3)), stuck)  # stuck but learnt
    summary = write_study_report(tmp_path)
    assert [r["status"] for r in summary["runs"]] == ["ok", "ok", "collapsed", "ok"]
    assert "stuck" in summary["runs"][2]["reason"]
    assert summary["arms"]["new"]["vs_reference"]["dice"]["seeds"] == [1]


def test_report_of_a_folder_that_is_not_a_study(tmp_path):
    from prism.errors import ConfigError

    with pytest.raises(ConfigError, match="not a study folder"):
        write_study_report(tmp_path)


# ---- collapse judged from what a run predicts ------------------------------------------------------------------

LABELS = ["background", "necrosis", "edema", "enhancing"]
VOXELS, WT, TC, ET = 1000, 60, 25, 10  # every fake case: region sizes in voxels


def _constant_dice_by_hand() -> np.ndarray:
    """[labels, regions]: Dice of one label everywhere, 2|G| / (N + |G|) where the label is in the region."""
    def everywhere(g):
        return 2 * g / (VOXELS + g)

    return np.array([[0.0, 0.0, 0.0],  # background everywhere: no region predicted, every reference non-empty
                     [everywhere(WT), everywhere(TC), 0.0],  # necrosis: in WT and TC
                     [everywhere(WT), 0.0, 0.0],  # edema: WT only
                     [everywhere(WT), everywhere(TC), everywhere(ET)]])


def _predicting_run(folder, dice, fractions, brain=0.5, log_extra=None):
    """A fake run whose eval.json records what it predicted (label fractions per pair) and the constant Dice."""
    n = len(CASES)
    report = EvalReport(modalities=tuple(BRATS_MODALITIES), regions=("WT", "TC", "ET"), combinations=COMBOS,
                        case_ids=CASES, dice=dice, sites=["site0"] * n, label_names=LABELS,
                        label_fraction=np.broadcast_to(np.asarray(fractions, float), (n, 15, 4)).copy(),
                        constant_dice=np.broadcast_to(_constant_dice_by_hand(), (n, 4, 3)).copy(),
                        brain_fraction=np.full(n, brain),
                        settings={"hd95_convention": None, "lesion_convention": None})
    write_report(report, folder, heatmap=False)
    log = CsvLog(folder / "train_log.csv")
    for i in range(4):
        log.write({"step": (i + 1) * 10, "lr": 0.01, "fuse": 1.0 - 0.1 * i, "pixel_kl": 0.01, "loss": 1.2 - 0.1 * i,
                   **(log_extra or {})})


def test_runs_predicting_a_constant_or_more_tumour_than_brain_are_collapsed_whatever_the_thresholds(tmp_path):
    _spec(tmp_path, seeds=(0, 1, 2))
    rng = np.random.default_rng(3)
    healthy = [0.94, 0.02, 0.03, 0.01]
    for seed in range(3):
        _predicting_run(tmp_path / "runs" / "base" / f"seed-{seed}", rng.uniform(0.5, 0.8, (4, 15, 3)), healthy)
    everywhere = np.broadcast_to(_constant_dice_by_hand()[2], (4, 15, 3)).copy()  # edema in every voxel
    assert everywhere[0, 0, 0] > 0.10  # WT about 11%: above the Dice thresholds
    _predicting_run(tmp_path / "runs" / "new" / "seed-0", everywhere, [0, 0, 1, 0])
    overflow = np.broadcast_to([0.288, 0.05, 0.02], (4, 15, 3)).copy()  # 70% of the volume tumour, brain 50%
    _predicting_run(tmp_path / "runs" / "new" / "seed-1", overflow, [0.3, 0.0, 0.7, 0.0])
    _predicting_run(tmp_path / "runs" / "new" / "seed-2", rng.uniform(0.5, 0.8, (4, 15, 3)), healthy)
    summary = write_study_report(tmp_path)
    runs = {(r["arm"], r["seed"]): r for r in summary["runs"]}
    assert runs["new", 0]["status"] == "collapsed" and "predicting 'edema' everywhere" in runs["new", 0]["reason"]
    assert runs["new", 1]["status"] == "collapsed"
    assert "more voxels as tumour than the brain" in runs["new", 1]["reason"]
    assert [runs["base", s]["status"] for s in range(3)] == ["ok"] * 3 and runs["new", 2]["status"] == "ok"


def test_one_label_nearly_everywhere_is_a_collapse():
    from prism.study.collapse import prediction_collapse

    n = len(CASES)
    report = EvalReport(modalities=tuple(BRATS_MODALITIES), regions=("WT", "TC", "ET"), combinations=COMBOS,
                        case_ids=CASES, dice=np.full((n, 15, 3), 0.3), label_names=LABELS,
                        label_fraction=np.broadcast_to([0.004, 0.001, 0.995, 0.0], (n, 15, 4)).copy(),
                        constant_dice=np.broadcast_to(_constant_dice_by_hand(), (n, 4, 3)).copy(),
                        brain_fraction=np.full(n, 1.0))
    assert "predicts 'edema' in 99.5% of the volume" in prediction_collapse(report)
    report.label_fraction[:] = [0.9, 0.03, 0.05, 0.02]
    assert prediction_collapse(report) is None
    report.constant_dice = None  # a report written before predictions were recorded: no judgement
    assert prediction_collapse(report) is None


# ---- verdicts, term shares, conventions, curves ------------------------------------------------------------------

def test_two_seeds_say_too_few_seeds_and_shares_and_conventions_are_reported(tmp_path):
    _spec(tmp_path, seeds=(0, 1))
    rng = np.random.default_rng(4)
    healthy = [0.94, 0.02, 0.03, 0.01]
    for seed in (0, 1):
        _predicting_run(tmp_path / "runs" / "base" / f"seed-{seed}", rng.uniform(0.5, 0.6, (4, 15, 3)), healthy,
                        log_extra={"share.fuse": 0.9, "share.pixel_kl": 0.1})
        _predicting_run(tmp_path / "runs" / "new" / f"seed-{seed}", rng.uniform(0.8, 0.9, (4, 15, 3)), healthy,
                        log_extra={"share.fuse": 0.99, "share.pixel_kl": 0.01})
    summary = write_study_report(tmp_path)
    d = summary["arms"]["new"]["vs_reference"]["dice"]
    assert all(low > 0 for low in d["low"])  # a large difference, yet two seeds cannot carry a verdict
    assert d["verdict"] == ["too few seeds to conclude"] * 3
    assert summary["arms"]["new"]["term_shares"] == pytest.approx({"fuse": 0.99, "pixel_kl": 0.01})
    assert summary["conventions"]["averaging"].startswith("mean over the modality combinations")
    md = (tmp_path / "report.md").read_text()
    assert "too few seeds to conclude (2 seeds)" in md and "Agree" not in md
    assert "| new | 99.0 | 1.0 |" in md  # the shares table, in % of the total
    assert "Within-seed" in md and "Student's t" in md


def test_the_training_curves_show_comparable_components_never_the_total():
    from prism.study.plots import loss_components

    logs = [{"step": np.arange(3), "lr": np.ones(3), "loss": np.ones(3), "uni": np.ones(3), "fuse": np.ones(3),
             "share.fuse": np.ones(3), "samples_per_s": np.ones(3)},
            {"step": np.arange(3), "loss": np.ones(3), "fuse": np.ones(3), "meta": np.ones(3)}]
    assert loss_components(logs) == ["fuse", "uni", "meta"]


def test_an_evaluation_that_did_not_score_the_final_checkpoint_is_left_out_as_stale(tmp_path):
    import torch

    from prism.config import build_config, config_to_yaml
    from prism.evaluation.provenance import checkpoint_record

    _spec(tmp_path, seeds=(0,))
    rng = np.random.default_rng(2)
    for arm in ("base", "new"):
        folder = tmp_path / "runs" / arm / "seed-0"
        _fake_run(folder, np.clip(rng.normal(0.6, 0.05, (4, 15, 3)), 0, 1), [0.9, 0.6, 0.4])
        (folder / "config.yaml").write_text(config_to_yaml(build_config(None, ["train.steps=30"])))
        torch.save({"step": 30}, folder / "last.pt")
    current = tmp_path / "runs" / "base" / "seed-0"
    data = json.loads((current / "eval.json").read_text())
    (current / "eval.json").write_text(json.dumps({**data, "checkpoint": checkpoint_record(current / "last.pt")}))
    stale = tmp_path / "runs" / "new" / "seed-0"  # its eval.json scored step 12 of a run trained on since
    data = json.loads((stale / "eval.json").read_text())
    (stale / "eval.json").write_text(json.dumps({**data, "checkpoint": {**checkpoint_record(stale / "last.pt"),
                                                                         "step": 12}}))
    summary = write_study_report(tmp_path)
    runs = {r["arm"]: r for r in summary["runs"]}
    assert runs["base"]["status"] == "ok"
    assert runs["new"]["status"] == "missing" and "stale eval.json" in runs["new"]["reason"]
