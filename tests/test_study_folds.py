"""Cross-validation folds as a study axis: every arm x seed x fold is a run with ``data.fold``; a synthetic study
cuts the folds into its cache once, a given cache must hold them; status names the fold; the report pairs the arms
by (seed, fold), averages each seed's folds and puts its intervals over seeds. Spec mistakes are one line, exit 2,
nothing written."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy import stats

from conftest import FAST, tree_state
from prism.cli.study import main as study_main
from prism.data.cache_reader import CacheReader
from prism.data.splits import fold_splits, update_splits
from prism.engine.metrics_log import CsvLog
from prism.errors import ConfigError
from prism.evaluation.results import EvalReport
from prism.evaluation.writers import write_report
from prism.modalities import BRATS_MODALITIES, enumerate_combinations
from prism.study.folds import check_folds_before_writing
from prism.study.report import write_study_report
from prism.study.runner import SPEC_NAME, cache_path, prepare_data
from prism.study.spec import StudySpec, plan_runs, spec_to_yaml
from prism.study.status import run_statuses, status_lines

# 6 cases, 2 in the test split: 4 training cases, cut into 2 folds of 2
TINY_FOLDS = {
    "name": "folds",
    "data": {"synthetic": {"cases": 6, "shape": [16, 16, 16], "seed": 3, "test_fraction": 0.34}},
    "overrides": [*FAST, "train.steps=2", "train.val_every=2", "eval.hd95=false", "train.loggers=[csv]"],
    "arms": {"baseline": None, "fast": ["optim.lr=0.03"]},
    "seeds": [0],
    "folds": 2,
    "report": {"bootstrap_samples": 200},
}


def _write(folder: Path, spec: dict, name: str = "spec.yaml") -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(spec))
    return path


def _splits(cache: Path) -> dict[str, set[str]]:
    reader = CacheReader(cache)
    try:
        return {name: set(reader.split(name)) for name in reader.splits}
    finally:
        reader.close()


def _headline_by_hand(eval_json: dict, region: str) -> float:
    """The run's headline Dice (%) from eval.json's per-case values: for each combination the mean over the cases
    scored on it, then the mean over the combinations."""
    per_combo = []
    for combo in (c["name"] for c in eval_json["combinations"]):
        values = [case["combinations"][combo]["dice"][region] for case in eval_json["cases"].values()]
        values = [v for v in values if v is not None]
        if values:
            per_combo.append(sum(values) / len(values))
    return 100 * sum(per_combo) / len(per_combo)


def _t_interval_by_hand(d: list[float], confidence: float) -> tuple[float, float, float]:
    mean = sum(d) / len(d)
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / (len(d) - 1))
    half = stats.t.ppf((1 + confidence) / 2, len(d) - 1) * sd / math.sqrt(len(d))
    return mean, mean - half, mean + half


# ---- a tiny study end to end -------------------------------------------------------------------------------------

@pytest.mark.slow
def test_two_arms_one_seed_two_folds_end_to_end_paired_by_seed_and_fold(tmp_path, capsys, monkeypatch):
    spec = _write(tmp_path, TINY_FOLDS)
    out = tmp_path / "study"
    assert study_main(["run", str(spec), "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "2 arms x 1 seeds x 2 folds = 4 runs" in printed and "[4/4 done, 0 left]" in printed
    assert "baseline/seed-0/fold-1 finished" in printed

    cache = next((out / "data").glob("synthetic-*.h5"))
    splits = _splits(cache)
    train = splits["train"]
    assert len(train) == 4 and not train & splits["test"]
    assert splits["fold0_val"].isdisjoint(splits["fold1_val"]) and splits["fold0_val"] | splits["fold1_val"] == train
    for k in (0, 1):
        assert splits[f"fold{k}_train"] == train - splits[f"fold{k}_val"] and len(splits[f"fold{k}_val"]) == 2
    validated = {}
    for arm in ("baseline", "fast"):
        assert not (out / "runs" / arm / "seed-0" / "config.yaml").exists()  # seed-0 holds the folds' runs only
        for k in (0, 1):
            run = out / "runs" / arm / "seed-0" / f"fold-{k}"
            config = yaml.safe_load((run / "config.yaml").read_text())
            assert config["data"]["fold"] == k and config["train"]["seed"] == 0
            assert config["eval"]["split"] == "test" and (run / "best.pt").is_file()  # validated on its fold
            evaluated = json.loads((run / "eval.json").read_text())
            assert set(evaluated["cases"]) == splits["test"]  # every fold's run is scored on the study's test split
            validated[(arm, k)] = splits[f"fold{k}_val"]
    assert validated[("baseline", 0)].isdisjoint(validated[("baseline", 1)])
    assert validated[("baseline", 0)] == validated[("fast", 0)]  # the two arms of one fold saw the same cases

    report = json.loads((out / "report.json").read_text())
    assert report["folds"] == [0, 1] and report["statistics"]["unit"] == "seed (mean over its folds)"
    assert [(r["arm"], r["fold"]) for r in report["runs"]] == [("baseline", 0), ("baseline", 1), ("fast", 0),
                                                               ("fast", 1)]
    markdown = (out / "report.md").read_text()
    assert "paired by seed and fold" in markdown and "with one seed there is no interval" in markdown
    assert re.search(r"^\| baseline \| 0 \| 1 \| \w+ \|", markdown, re.M)  # the runs table has a fold column

    # The report pairs by (seed, fold) and averages a seed's folds, checked against the runs' eval.json files. Runs
    # this small mostly predict background and are left out as collapsed, so the pairing is read with every run kept.
    monkeypatch.setattr("prism.study.report.flag_run", lambda record, settings: None)
    report = write_study_report(out)
    diff = report["arms"]["fast"]["vs_reference"]["dice"]
    assert diff["seeds"] == [0] and diff["folds"] == [0, 1] and diff["seeds_incomplete"] == []
    assert list(diff["per_unit"]) == ["seed-0/fold-0", "seed-0/fold-1"] and list(diff["per_seed"]) == ["0"]
    for i, region in enumerate(report["regions"]):
        per_unit = []
        for k in (0, 1):
            ref, other = (json.loads((out / f"runs/{arm}/seed-0/fold-{k}/eval.json").read_text())
                          for arm in ("baseline", "fast"))
            per_unit.append(_headline_by_hand(other, region) - _headline_by_hand(ref, region))
            assert diff["per_unit"][f"seed-0/fold-{k}"][i] == pytest.approx(per_unit[-1], abs=1e-4)
        seed_difference = sum(per_unit) / 2  # the seed's cross-validated difference
        assert diff["per_seed"]["0"][i] == pytest.approx(seed_difference, abs=1e-4)
        assert diff["difference"][i] == pytest.approx(seed_difference, abs=1e-4)
        assert diff["low"][i] is None and diff["high"][i] is None  # one seed: its two folds make no interval
        assert diff["verdict"][i] == "too few seeds to conclude"
    monkeypatch.undo()

    stamps = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/*/*/last.pt")}
    cache_stamp = cache.stat().st_mtime_ns
    assert len(stamps) == 4
    assert study_main(["run", str(spec), "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "4 finished, 0 to resume, 0 to start" in printed and "done," not in printed
    assert stamps == {p: p.stat().st_mtime_ns for p in out.glob("runs/*/*/*/last.pt")}
    assert cache.stat().st_mtime_ns == cache_stamp  # the folds are cut once

    assert study_main(["status", str(out)]) == 0
    table = capsys.readouterr().out.strip().splitlines()
    assert [line.split()[0] for line in table[1:-1]] == ["baseline/seed-0/fold-0", "baseline/seed-0/fold-1",
                                                         "fast/seed-0/fold-0", "fast/seed-0/fold-1"]
    assert table[1].split()[1:3] == ["finished", "2/2"] and table[-1] == "4 finished"
    assert study_main(["status", str(out), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["arm"], r["fold"]) for r in rows] == [("baseline", 0), ("baseline", 1), ("fast", 0), ("fast", 1)]


# ---- planning ------------------------------------------------------------------------------------------------------

def test_every_arm_seed_and_fold_is_a_run_with_its_fold_and_the_layout_without_folds_is_unchanged(tmp_path):
    spec = StudySpec.model_validate({**TINY_FOLDS, "seeds": [0, 1], "folds": 3})
    runs = plan_runs(spec, tmp_path / "c.h5")
    assert [(r.arm, r.seed, r.fold) for r in runs] == [
        (arm, seed, fold) for arm in ("baseline", "fast") for seed in (0, 1) for fold in (0, 1, 2)]
    assert runs[4].folder == "runs/baseline/seed-1/fold-1" and runs[4].name == "baseline/seed-1/fold-1"
    for run in runs:
        assert run.config.data.fold == run.fold and run.config.train.seed == run.seed
        assert run.config.training_splits() == (f"fold{run.fold}_train", f"fold{run.fold}_val")
    plain = plan_runs(StudySpec.model_validate({**TINY_FOLDS, "folds": None}), tmp_path / "c.h5")
    assert [r.folder for r in plain] == ["runs/baseline/seed-0", "runs/fast/seed-0"]
    assert all(r.fold is None and r.config.data.fold is None for r in plain)


@pytest.mark.parametrize(("folds", "indices"), [(3, [0, 1, 2]), ([2, 0], [2, 0]), ({"count": 4, "use": [1]}, [1])])
def test_folds_shorthands(folds, indices):
    spec = StudySpec.model_validate({**TINY_FOLDS, "data": {"cache": "c.h5"}, "folds": folds})
    assert spec.fold_indices == indices
    assert StudySpec.model_validate(yaml.safe_load(spec_to_yaml(spec))).fold_indices == indices  # study.yaml reloads


def test_status_names_the_fold_of_every_run(tmp_path):
    spec = StudySpec.model_validate({**TINY_FOLDS, "arms": {"only": None}})
    rows = run_statuses(spec, tmp_path, ask_slurm=False)
    assert [(r["fold"], r["folder"], r["state"]) for r in rows] == [
        (0, "runs/only/seed-0/fold-0", "to start"), (1, "runs/only/seed-0/fold-1", "to start")]
    assert [line.split()[0] for line in status_lines(rows)[1:-1]] == ["only/seed-0/fold-0", "only/seed-0/fold-1"]


# ---- the folds in the cache ----------------------------------------------------------------------------------------

def test_a_synthetic_study_cuts_its_folds_once_and_refuses_other_folds_later(tmp_path):
    data = {"synthetic": {"cases": 8, "shape": [16, 16, 16], "test_fraction": 0.25}}  # 6 training cases
    spec = StudySpec.model_validate({**TINY_FOLDS, "data": data, "folds": {"count": 3, "seed": 5}})
    out = tmp_path / "study"
    cache = prepare_data(spec, out)
    splits = _splits(cache)
    train = splits["train"]
    vals = [splits[f"fold{k}_val"] for k in range(3)]
    assert [len(v) for v in vals] == [2, 2, 2] and set().union(*vals) == train
    assert all(a.isdisjoint(b) for i, a in enumerate(vals) for b in vals[i + 1:])
    assert all(splits[f"fold{k}_train"] == train - vals[k] for k in range(3))
    stamp = cache.stat().st_mtime_ns
    assert prepare_data(spec, out) == cache and cache.stat().st_mtime_ns == stamp
    check_folds_before_writing(spec, cache)  # the same folds: nothing to refuse
    other = StudySpec.model_validate({**TINY_FOLDS, "data": data, "folds": 2})
    with pytest.raises(ConfigError, match=r"^folds: the study's cache .* holds 3 folds cut for another folds "
                                          r"setting .*new study folder$"):
        check_folds_before_writing(other, cache_path(other, out))
    reseeded = StudySpec.model_validate({**TINY_FOLDS, "data": data, "folds": {"count": 3, "seed": 6}})
    with pytest.raises(ConfigError, match="another folds setting"):
        check_folds_before_writing(reseeded, cache_path(reseeded, out))


@pytest.fixture
def plain_cache(tmp_path) -> Path:
    """A 6-case synthetic cache (4 training cases) without folds, outside the study's working folder."""
    spec = StudySpec.model_validate({**TINY_FOLDS, "folds": None})
    return prepare_data(spec, tmp_path / "made")


def test_a_given_cache_must_hold_the_folds_the_spec_runs(plain_cache):
    def spec(folds):
        return StudySpec.model_validate({**TINY_FOLDS, "data": {"cache": str(plain_cache)}, "folds": folds})

    with pytest.raises(ConfigError, match=r"has no cross-validation folds .*prism-data split .* --folds 2$"):
        check_folds_before_writing(spec(2), plain_cache)
    update_splits(plain_cache, lambda reader: fold_splits(reader.split("train"), 3))
    check_folds_before_writing(spec(3), plain_cache)
    check_folds_before_writing(spec([0, 2]), plain_cache)
    with pytest.raises(ConfigError, match=r"holds 3 folds, the spec's folds.count is 2; .*--folds 2"):
        check_folds_before_writing(spec(2), plain_cache)
    with pytest.raises(ConfigError, match=r"has no fold 3 \(it holds 3 folds: 0 to 2\)"):
        check_folds_before_writing(spec([1, 3]), plain_cache)


SYNTHETIC_MISTAKES = [
    ({"folds": 1}, r"folds\.count: Input should be greater than or equal to 2"),
    ({"folds": [0, 0]}, r"folds\.use: must be a non-empty list of distinct fold indices"),
    ({"folds": {"count": 2, "use": [2]}}, r"folds: use: fold 2 of 2 folds"),
    ({"folds": [0, 1]}, r"folds\.count: a synthetic study cuts its own folds"),
    ({"folds": 5}, r"folds\.count: 5 folds of the synthetic data's 4 training cases; need 2 to 4"),
    ({"overrides": [*TINY_FOLDS["overrides"], "eval.split=train"]},
     r"arm 'baseline': eval\.split: 'train' holds training cases of the folds' runs"),
    ({"arms": {"a": ["eval.split=fold1_val"]}}, r"arm 'a': eval\.split: 'fold1_val' holds training cases"),
    ({"arms": {"a": ["train.val_split=test"]}}, r"arm 'a'.*data\.fold chooses the validation split"),
]


@pytest.mark.parametrize(("change", "culprit"), SYNTHETIC_MISTAKES, ids=[m[1][:30] for m in SYNTHETIC_MISTAKES])
def test_fold_mistakes_are_one_line_exit_2_and_write_nothing(change, culprit, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    spec = _write(tmp_path, {**TINY_FOLDS, **change})
    before = tree_state(tmp_path)
    assert study_main(["run", str(spec), "-o", str(tmp_path / "study")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("prism-study: error: ") and re.search(culprit, err), err
    assert tree_state(tmp_path) == before


@pytest.mark.parametrize(("folds", "culprit"), [
    (2, r"data\.cache: .*has no cross-validation folds .*; make them with prism-data split .* --folds 2"),
    ({"count": 2, "seed": 1}, r"folds\.seed: a given cache's folds are already cut"),
])
def test_a_given_cache_without_the_folds_is_one_line_and_left_as_it_is(folds, culprit, plain_cache, tmp_path,
                                                                        monkeypatch, capsys):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    spec = _write(work, {**TINY_FOLDS, "data": {"cache": str(plain_cache)}, "folds": folds})
    before = tree_state(work, plain_cache.parent)
    assert study_main(["run", str(spec), "-o", str(work / "study")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and re.search(culprit, err), err
    assert tree_state(work, plain_cache.parent) == before


# ---- the report from fake run folders ------------------------------------------------------------------------------

COMBOS = [c.name for c in enumerate_combinations(BRATS_MODALITIES)]
CASES = [f"case{i}" for i in range(4)]


def _fake_run(folder: Path, dice: np.ndarray) -> None:
    report = EvalReport(modalities=tuple(BRATS_MODALITIES), regions=("WT", "TC", "ET"), combinations=COMBOS,
                        case_ids=CASES, dice=dice, sites=["site0"] * len(CASES))
    write_report(report, folder, heatmap=False)
    log = CsvLog(folder / "train_log.csv")
    for i, loss in enumerate([0.9, 0.6, 0.4, 0.3]):
        log.write({"step": (i + 1) * 10, "lr": 0.01, "loss": loss, "fuse": loss})


def test_the_report_pairs_by_seed_and_fold_averages_each_seeds_folds_and_drops_a_seed_with_a_flagged_fold(tmp_path):
    spec = StudySpec.model_validate({"name": "fake", "data": {"cache": str(tmp_path / "none.h5")},
                                     "arms": {"base": {}, "new": {}}, "seeds": [0, 1, 2, 3, 4], "folds": 2,
                                     "report": {"bootstrap_samples": 300}})
    (tmp_path / SPEC_NAME).write_text(spec_to_yaml(spec))
    rng = np.random.default_rng(4)
    dice = {}
    for arm, centre in (("base", 0.6), ("new", 0.7)):
        for seed in range(5):
            for fold in (0, 1):
                values = np.clip(rng.normal(centre + 0.05 * fold, 0.05, (4, 15, 3)), 0, 1)
                values[0, 3] = np.nan  # a case not scored on one combination
                dice[(arm, seed, fold)] = values
                if (arm, seed, fold) == ("new", 1, 0) or (arm, seed) == ("base", 4):
                    values = np.zeros((4, 15, 3))  # collapsed: seeds 1 and 4 leave the comparison, both folds
                _fake_run(tmp_path / f"runs/{arm}/seed-{seed}/fold-{fold}", values)
    summary = write_study_report(tmp_path)
    flagged = [(r["arm"], r["seed"], r["fold"]) for r in summary["runs"] if r["status"] != "ok"]
    assert flagged == [("base", 4, 0), ("base", 4, 1), ("new", 1, 0)]
    diff = summary["arms"]["new"]["vs_reference"]["dice"]
    assert diff["seeds"] == [0, 2, 3] and diff["folds"] == [0, 1] and diff["seeds_incomplete"] == [1, 4]
    assert list(diff["per_unit"]) == [f"seed-{s}/fold-{k}" for s in (0, 2, 3) for k in (0, 1)]
    assert list(diff["per_seed"]) == ["0", "2", "3"]

    def headline(values, r):  # per combination the mean over cases, then the mean over combinations
        return 100 * np.mean([np.nanmean(values[:, c, r]) for c in range(15)])

    for r in range(3):
        by_run = {(s, k): headline(dice[("new", s, k)], r) - headline(dice[("base", s, k)], r)
                  for s in (0, 2, 3) for k in (0, 1)}
        d = [(by_run[(s, 0)] + by_run[(s, 1)]) / 2 for s in (0, 2, 3)]  # each seed's cross-validated difference
        mean, low, high = _t_interval_by_hand(d, 0.95)  # over the 3 seeds, not the 6 runs
        assert diff["per_unit"]["seed-2/fold-1"][r] == pytest.approx(by_run[(2, 1)], abs=1e-4)
        assert diff["per_seed"]["2"][r] == pytest.approx(d[1], abs=1e-4)
        assert (diff["difference"][r], diff["low"][r], diff["high"][r]) == pytest.approx((mean, low, high), abs=1e-4)
        assert diff["sd_over_seeds"][r] == pytest.approx(np.std(d, ddof=1), abs=1e-4)
        assert diff["verdict"][r] == ("better" if low > 0 else "no difference shown")  # 3 seeds: a verdict
    assert summary["arms"]["new"]["folds_used"] == [0, 1, 1, 0, 1, 0, 1, 0, 1]
    assert summary["arms"]["new"]["seeds_used"] == [0, 0, 1, 2, 2, 3, 3, 4, 4]
    markdown = (tmp_path / "report.md").read_text()
    assert "- new/seed-1/fold-0: collapsed" in markdown and "(3 seeds)" in markdown
    assert "Seeds left out of new's comparison (a fold without both runs usable): [1, 4]." in markdown
    assert "with one seed there is no interval" not in markdown
    header = (tmp_path / "report.csv").read_text().splitlines()[0]
    assert header == "arm,seed,fold,status,region,dice,hd95_mm,reason"


def test_the_report_without_folds_keeps_its_seed_keys_and_columns(tmp_path):
    spec = StudySpec.model_validate({"name": "fake", "data": {"cache": str(tmp_path / "none.h5")},
                                     "arms": {"base": {}, "new": {}}, "seeds": [0, 1, 2],
                                     "report": {"bootstrap_samples": 300}})
    (tmp_path / SPEC_NAME).write_text(spec_to_yaml(spec))
    rng = np.random.default_rng(5)
    for arm in ("base", "new"):
        for seed in range(3):
            _fake_run(tmp_path / f"runs/{arm}/seed-{seed}", np.clip(rng.normal(0.6, 0.05, (4, 15, 3)), 0, 1))
    summary = write_study_report(tmp_path)
    diff = summary["arms"]["new"]["vs_reference"]["dice"]
    assert diff["seeds"] == [0, 1, 2] and "folds" not in diff and "per_unit" not in diff
    assert list(diff["per_seed"]) == ["0", "1", "2"]
    assert summary["folds"] is None and summary["statistics"]["unit"] == "seed"
    assert (tmp_path / "report.csv").read_text().splitlines()[0] == "arm,seed,status,region,dice,hd95_mm,reason"
    assert "(3 seeds)" in (tmp_path / "report.md").read_text()


# ---- the spec reference --------------------------------------------------------------------------------------------

def test_every_study_spec_field_has_a_description_in_the_generated_reference():
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "docs" / "_gen" / "gen_reference.py"
    module_spec = importlib.util.spec_from_file_location("gen_reference", path)
    gen = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(gen)
    undocumented: list[str] = []
    sections = [path for path, _, _ in gen.config_rows(StudySpec, "", undocumented)]
    assert "folds" in sections and undocumented == []
