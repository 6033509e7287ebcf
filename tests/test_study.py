"""prism-study run: a tiny study end to end; a rerun trains nothing; cut runs resume; spec mistakes are one line."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from conftest import FAST
from prism.cli.study import main as study_main
from prism.engine.trainer import Trainer
from prism.errors import ConfigError
from prism.study.runner import ExecutorOptions, prepare_data, run_study
from prism.study.spec import StudySpec, load_spec, plan_runs

TINY = {
    "name": "tiny",
    "data": {"synthetic": {"cases": 6, "shape": [24, 24, 24], "seed": 3, "test_fraction": 0.34}},
    "overrides": [*FAST, "train.steps=4", "eval.hd95=false", "train.tensorboard=false"],
    "arms": {"baseline": None, "fast": ["optim.lr=0.03"]},
    "seeds": [0, 1],
    "report": {"bootstrap_samples": 200},
}


def _write(tmp_path, spec: dict, name: str = "spec.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.mark.slow
def test_tiny_study_end_to_end_and_a_rerun_trains_nothing(tmp_path, capsys):
    spec = _write(tmp_path, TINY)
    out = tmp_path / "study"
    assert study_main(["run", str(spec), "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "4 to start" in printed and "[4/4 done, 0 left]" in printed
    for arm in ("baseline", "fast"):
        for seed in (0, 1):
            run = out / "runs" / arm / f"seed-{seed}"
            config = yaml.safe_load((run / "config.yaml").read_text())
            assert config["train"]["seed"] == seed and (run / "eval.json").is_file()
            assert config["optim"]["lr"] == (0.03 if arm == "fast" else 0.01)
    assert torch.load(out / "runs/fast/seed-1/last.pt", weights_only=False)["step"] == 4
    report = json.loads((out / "report.json").read_text())
    assert set(report["arms"]) == {"baseline", "fast"} and report["reference"] == "baseline"
    assert (out / "report.md").read_text().startswith("# Study 'tiny'")
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/*/last.pt")}
    assert study_main(["run", str(spec), "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "4 finished, 0 to resume, 0 to start" in printed and "done," not in printed
    assert stamps == {p: p.stat().st_mtime_ns for p in out.glob("runs/*/*/last.pt")}


@pytest.mark.slow
def test_an_interrupted_run_is_resumed_not_restarted(tmp_path):
    spec = StudySpec.model_validate({**TINY, "arms": {"only": None}, "seeds": [0],
                                     "overrides": [*TINY["overrides"], "train.steps=6"]})
    out = tmp_path / "study"
    cache = prepare_data(spec, out)
    (run,) = plan_runs(spec, cache)
    first = Trainer(run.config, out / run.folder, cache_path=cache)
    first.fit(stop_at=2)  # a run cut after step 2 (checkpoint_every=3 in FAST: last.pt is saved at the stop)
    first.close()
    done = run_study(spec, out, log=lambda _: None)
    assert [r.arm for r in done.state.resume] == ["only"] and not done.state.fresh and done.outcomes[0].ok
    steps = [int(line.split(",")[0]) for line in (out / run.folder / "train_log.csv").read_text().splitlines()[1:]]
    assert steps == [2, 4, 6]  # one log, continued: the first two steps were not trained again


def test_a_run_folder_made_with_another_config_is_refused(tmp_path):
    spec = StudySpec.model_validate({**TINY, "arms": {"only": None}, "seeds": [0]})
    out = tmp_path / "study"
    cache = prepare_data(spec, out)
    (run,) = plan_runs(spec, cache)
    folder = out / run.folder
    folder.mkdir(parents=True)
    changed = run.config.model_copy(update={"optim": run.config.optim.model_copy(update={"lr": 0.5})})
    from prism.config import config_to_yaml

    (folder / "config.yaml").write_text(config_to_yaml(changed))
    (folder / "last.pt").write_bytes(b"x")
    with pytest.raises(ConfigError, match=r"optim\.lr differs"):
        run_study(spec, out, log=lambda _: None)


@pytest.mark.parametrize(("change", "message"), [
    ({"arms": {"a": {"overides": []}}}, "arms.a.overides: unknown field"),
    ({"reference": "nope"}, "reference 'nope' is not an arm"),
    ({"seeds": [1, 1]}, "seeds"),
    ({"data": {}}, "exactly one of data.cache and data.synthetic"),
    ({"arms": {"a": ["optim.lr=-1"]}}, "arm 'a': optim.lr"),
])
def test_spec_mistakes_are_one_line_errors_naming_the_field(tmp_path, capsys, change, message):
    spec = _write(tmp_path, {**TINY, **change})
    assert study_main(["run", str(spec), "-o", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("prism-study: error:") and message in err and "\n" not in err
    assert not (tmp_path / "s" / "runs").exists()


def test_arm_configs_merge_sections_and_overrides_in_order(tmp_path):
    spec = _write(tmp_path, {**TINY, "preset": "demo", "base": {"optim": {"weight_decay": 0.002}},
                             "arms": {"a": {"config": {"losses": [{"name": "fuse"}, {"name": "uni", "weight": 0.5}]},
                                            "overrides": ["train.steps=7"]}}})
    runs = plan_runs(load_spec(spec), tmp_path / "c.h5")
    assert [r.seed for r in runs] == [0, 1] and runs[0].folder == "runs/a/seed-0"
    c = runs[1].config
    assert [t.name for t in c.losses] == ["fuse", "uni"] and c.losses[1].weight == 0.5
    assert c.train.steps == 7 and c.train.seed == 1 and c.optim.weight_decay == 0.002
    assert c.optim.lr == 0.01  # the spec's overrides come after its sections
    assert c.model.name == "multi_unet"  # from the demo preset


@pytest.mark.slow
def test_submitit_local_executor_runs_a_study(tmp_path):
    pytest.importorskip("submitit")
    spec = StudySpec.model_validate({**TINY, "arms": {"only": None}, "seeds": [0]})
    done = run_study(spec, tmp_path / "s", options=ExecutorOptions(kind="submitit", cluster="local"),
                     log=lambda _: None)
    assert [o.ok for o in done.outcomes] == [True], done.outcomes
    assert (tmp_path / "s/runs/only/seed-0/eval.json").is_file()


@pytest.mark.slow
def test_jobs_run_in_parallel_processes_with_the_same_results(tmp_path):
    spec = StudySpec.model_validate({**TINY, "arms": {"only": None}})
    run_study(spec, tmp_path / "one", log=lambda _: None)
    done = run_study(spec, tmp_path / "two", options=ExecutorOptions(jobs=2), log=lambda _: None)
    assert sorted(o.seed for o in done.outcomes if o.ok) == [0, 1]
    for seed in (0, 1):
        a, b = (json.loads((tmp_path / d / f"runs/only/seed-{seed}/eval.json").read_text()) for d in ("one", "two"))
        assert a["mean"] == b["mean"]


@pytest.mark.parametrize("name", ["smoke", "prism_synthetic", "passion_brats2020"])
def test_shipped_studies_plan_and_build(name):
    from pathlib import Path

    from prism.engine.builder import build_parts
    from prism.modalities import BRATS_MODALITIES
    from prism.presets import list_presets

    spec = load_spec(Path(__file__).resolve().parents[1] / "studies" / f"{name}.yaml")
    if spec.preset and spec.preset not in list_presets():
        pytest.skip(f"preset {spec.preset} not shipped yet")
    runs = plan_runs(spec, Path("/nonexistent/cache.h5"))
    assert len(runs) == len(spec.arms) * len(spec.seeds) and spec.reference_arm in spec.arms
    for arm in spec.arms:  # every arm's plugins build with their options (before any data is needed)
        config = next(r.config for r in runs if r.arm == arm)
        build_parts(config, tuple(BRATS_MODALITIES), 4)


@pytest.mark.slow
def test_an_arm_asks_for_an_adaptation_curve_and_the_report_shows_it(tmp_path):
    spec = StudySpec.model_validate({
        **TINY, "data": {"synthetic": {"cases": 9, "shape": [16, 16, 16], "seed": 1, "sites": 3,
                                       "hold_out_site": "site2", "test_fraction": 0.34}},
        "arms": {"base": None, "other": {"overrides": ["optim.lr=0.02"], "adapt": False}}, "seeds": [0],
        "adapt": {"site": "site2", "steps": [0, 1], "support": 1, "draws": 2, "patch_size": [16, 16, 16]}})
    out = tmp_path / "s"
    run_study(spec, out, log=lambda _: None)
    assert (out / "runs/base/seed-0/adapt.json").is_file() and not (out / "runs/other/seed-0/adapt.json").exists()
    from prism.study.report import write_study_report

    summary = write_study_report(out)
    curve = json.loads((out / "runs/base/seed-0/adapt.json").read_text())
    assert summary["adaptation"]["base"]["steps"] == [0, 1] and "other" not in summary["adaptation"]
    assert summary["adaptation"]["base"]["dice_mean"][1][0] == pytest.approx(curve["dice_mean"][1][0] * 100, abs=1e-4)
    assert (out / "adaptation_curves.png").is_file()
    assert "Adaptation to a held-out site" in (out / "report.md").read_text()
    # adapt.json lost: the rerun computes only the curve, without training again
    (out / "runs/base/seed-0/adapt.json").unlink()
    stamp = (out / "runs/base/seed-0/last.pt").stat().st_mtime_ns
    done = run_study(spec, out, log=lambda _: None)
    assert [r.arm for r in done.state.adapt_only] == ["base"] and [o.ok for o in done.outcomes] == [True]
    assert (out / "runs/base/seed-0/last.pt").stat().st_mtime_ns == stamp
    assert (out / "runs/base/seed-0/adapt.json").is_file()
