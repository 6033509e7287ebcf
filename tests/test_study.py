"""prism-study run: a tiny study end to end; a rerun trains nothing; cut runs resume; spec mistakes are one line;
a signal stops every run with a checkpoint and the rerun finishes as if nothing happened; finished means evaluated
at the final checkpoint."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

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
    "overrides": [*FAST, "train.steps=4", "eval.hd95=false", "train.loggers=[csv]"],
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
    assert study_main(["status", str(out)]) == 0
    table = capsys.readouterr().out.strip().splitlines()
    assert table[0].split() == ["run", "state", "step", "job", "log"] and table[-1] == "4 finished"
    assert table[1].split() == ["baseline/seed-0", "finished", "4/4", "-", "-"]


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
    split = [(True, True, True, True), (True, False, True, False)]  # a training split's availability (from_split)
    for arm in spec.arms:  # every arm's plugins build with their options (before any data is needed)
        config = next(r.config for r in runs if r.arm == arm)
        build_parts(config, tuple(BRATS_MODALITIES), 4, availability=split)


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


# ---- stopping a study ----------------------------------------------------------------------------------------
LONG = [*TINY["overrides"], "train.steps=24", "train.log_every=1", "train.checkpoint_every=1000"]


def _logged_step(run: Path) -> int:
    try:
        with open(run / "train_log.csv", newline="") as fh:
            rows = list(csv.DictReader(fh))
    except OSError:
        return 0
    return int(rows[-1]["step"]) if rows else 0


def _family(pid: int) -> set[int]:
    """``pid`` and every process below it (read from /proc)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    family, grew = {pid}, True
    while grew:
        more = {p for p, parent in parents.items() if parent in family} - family
        family |= more
        grew = bool(more)
    return family


def _alive(pids: set[int]) -> set[int]:
    alive = set()
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            alive.add(pid)
    return alive


def _start_study(spec: Path, out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "prism.cli.study", "run", str(spec), "-o", str(out), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_steps(proc: subprocess.Popen, runs: list[Path], step: int, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None and min(_logged_step(r) for r in runs) < step:
        time.sleep(0.05)
    assert proc.poll() is None, f"the study ended before step {step}: {proc.communicate()[1][-2000:]}"


def _report_numbers(study: Path) -> dict:
    report = json.loads((study / "report.json").read_text())
    for run in report["runs"]:
        run.pop("folder")  # the only field naming the study folder
    return report


def _weights_hash(run: Path) -> str:
    state = torch.load(run / "last.pt", map_location="cpu", weights_only=True)
    digest = hashlib.sha256()
    for name, tensor in sorted(state["model"].items()):
        digest.update(name.encode() + tensor.numpy().tobytes())
    return digest.hexdigest()


@pytest.mark.slow
def test_sigterm_to_a_two_job_study_checkpoints_every_run_and_the_rerun_equals_an_uninterrupted_study(tmp_path):
    # long enough that neither run can finish while the other is still starting on a loaded machine
    steps = 80
    spec = _write(tmp_path, {**TINY, "arms": {"only": None}, "overrides": [*LONG, f"train.steps={steps}"]})
    cut = tmp_path / "cut"
    runs = [cut / f"runs/only/seed-{seed}" for seed in (0, 1)]
    proc = _start_study(spec, cut, "--jobs", "2")
    try:
        _wait_for_steps(proc, runs, 2)
        family = _family(proc.pid)
        assert len(family) >= 3, family  # the study and its two runs
        proc.send_signal(signal.SIGTERM)
        err = proc.communicate(timeout=240)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 143, err[-3000:]
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "prism-study: stopped by SIGTERM; 2 to resume (only/seed-0, only/seed-1);" in lines[0]
    assert f"resume with: prism-study run {spec} -o {cut} --jobs 2" in lines[0]
    deadline = time.time() + 10
    while _alive(family) and time.time() < deadline:
        time.sleep(0.1)
    assert not _alive(family), "a run process outlived the study"
    for run in runs:  # each run wrote its checkpoint at the step it stopped: to resume, never failed
        step = torch.load(run / "last.pt", map_location="cpu", weights_only=True)["step"]
        assert 2 <= step < steps and _logged_step(run) == step
        assert not (run / "error.txt").exists() and not (run / "eval.json").exists()
    status = json.loads((cut / "status.json").read_text())
    assert [r["state"] for r in status["runs"]] == ["to resume", "to resume"]

    assert study_main(["run", str(spec), "-o", str(cut), "--jobs", "2"]) == 0
    straight = tmp_path / "straight"
    assert study_main(["run", str(spec), "-o", str(straight), "--jobs", "2"]) == 0
    assert _report_numbers(cut) == _report_numbers(straight)
    for seed in (0, 1):
        a, b = (d / f"runs/only/seed-{seed}" for d in (cut, straight))
        assert _weights_hash(a) == _weights_hash(b)
        logged = [int(row["step"]) for row in csv.DictReader(open(a / "train_log.csv", newline=""))]
        assert logged == list(range(1, steps + 1))  # one log, no step trained twice


@pytest.mark.slow
def test_sigterm_to_a_one_job_study_stops_the_run_and_starts_no_other(tmp_path):
    spec = _write(tmp_path, {**TINY, "arms": {"only": None}, "overrides": LONG})
    out = tmp_path / "s"
    proc = _start_study(spec, out)
    try:
        _wait_for_steps(proc, [out / "runs/only/seed-0"], 2)
        proc.send_signal(signal.SIGTERM)
        stdout, err = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 143, err[-3000:]
    assert "1 to resume (only/seed-0), 1 to start;" in err and len(err.strip().splitlines()) == 1
    assert "only/seed-0 stopped by SIGTERM at step" in stdout and "FAILED" not in stdout
    assert not (out / "runs/only/seed-0/error.txt").exists()
    assert not (out / "runs/only/seed-1/last.pt").exists()  # the second run never started
    assert [r["state"] for r in json.loads((out / "status.json").read_text())["runs"]] == ["to resume", "to start"]


@pytest.mark.slow
def test_runs_stop_with_a_checkpoint_when_their_study_is_killed(tmp_path):
    spec = _write(tmp_path, {**TINY, "arms": {"only": None}, "overrides": [*LONG, "train.steps=100000"]})
    out = tmp_path / "s"
    runs = [out / f"runs/only/seed-{seed}" for seed in (0, 1)]
    proc = _start_study(spec, out, "--jobs", "2")
    try:
        _wait_for_steps(proc, runs, 2)
        family = _family(proc.pid)
        proc.kill()  # SIGKILL: the study cannot pass anything on
        proc.wait()
        deadline = time.time() + 60
        while _alive(family) and time.time() < deadline:
            time.sleep(0.2)
        assert not _alive(family), "run processes outlived their study"
    finally:
        for pid in _alive(_family(proc.pid)) - {os.getpid()}:
            os.kill(pid, signal.SIGKILL)
    for run in runs:
        assert torch.load(run / "last.pt", map_location="cpu", weights_only=True)["step"] >= 2


# ---- finished means evaluated at the final checkpoint ----------------------------------------------------------
def _stamp(run: Path, step: int, sha: str | None = None) -> None:
    """Write an eval.json that says it scored last.pt at ``step`` (the hash of the last.pt there unless given)."""
    sha = sha or hashlib.sha256((run / "last.pt").read_bytes()).hexdigest()
    (run / "eval.json").write_text(json.dumps({"checkpoint": {"file": "last.pt", "step": step, "sha256": sha}}))


def test_an_evaluation_counts_only_for_the_final_checkpoint_it_scored(tmp_path):
    from prism.study.run_state import evaluation_is_current, read_run_folder

    run = tmp_path / "run"
    run.mkdir()
    torch.save({"step": 300}, run / "last.pt")
    assert not evaluation_is_current(run, 300)  # no eval.json
    (run / "eval.json").write_text(json.dumps({"mean": [0.5]}))
    assert not evaluation_is_current(run, 300)  # an evaluation that does not say what it scored
    _stamp(run, 300)
    assert evaluation_is_current(run, 300) and read_run_folder(run, 300).state == "finished"
    assert not evaluation_is_current(run, 400)  # the run was extended: its final step is later
    _stamp(run, 300, sha="0" * 64)
    assert not evaluation_is_current(run, 300)  # another checkpoint file than the one in the folder
    torch.save({"step": 36}, run / "last.pt")
    _stamp(run, 12)  # prism-eval at step 12 during training, then a preemption at step 36
    assert not evaluation_is_current(run, 300)
    assert read_run_folder(run, 300).state == "to resume" and read_run_folder(run, 300).step == 36
    torch.save({"step": 300}, run / "last.pt")
    assert read_run_folder(run, 300).state == "to evaluate"  # trained to the end, evaluation stale


@pytest.mark.slow
def test_a_stale_evaluation_is_redone_and_a_run_cut_before_its_end_is_resumed(tmp_path):
    spec = StudySpec.model_validate({**TINY, "arms": {"only": None}, "seeds": [0],
                                     "overrides": [*TINY["overrides"], "train.steps=6"]})
    out = tmp_path / "study"
    cache = prepare_data(spec, out)
    (run,) = plan_runs(spec, cache)
    folder = out / run.folder
    first = Trainer(run.config, folder, cache_path=cache)
    first.fit(stop_at=3)  # cut at step 3 ...
    first.evaluate()  # ... and evaluated there, as prism-eval during training would
    first.close()
    _stamp(folder, 3)
    done = run_study(spec, out, log=lambda _: None)
    assert [r.arm for r in done.state.resume] == ["only"] and done.outcomes[0].ok
    record = json.loads((folder / "eval.json").read_text())["checkpoint"]
    assert record["step"] == 6 and record["sha256"] == hashlib.sha256((folder / "last.pt").read_bytes()).hexdigest()
    stamp = (folder / "last.pt").stat().st_mtime_ns
    again = run_study(spec, out, log=lambda _: None)
    assert [r.arm for r in again.state.finished] == ["only"] and not again.outcomes
    assert (folder / "last.pt").stat().st_mtime_ns == stamp


def test_status_names_a_failed_job_and_its_log_after_slurm_has_forgotten_it(tmp_path):
    from prism.study.runner import cache_path
    from prism.study.status import run_statuses

    spec = StudySpec.model_validate({**TINY, "arms": {"only": None}})
    out = tmp_path / "study"
    runs = plan_runs(spec, cache_path(spec, out))
    failed = out / "runs/only/seed-0"
    failed.mkdir(parents=True)
    (failed / "job.json").write_text(json.dumps({
        "executor": "slurm", "job_id": "17", "folder": str(out / "submitit"), "stderr": "/logs/17_0_log.err",
        "outcome": "failed", "error": "job 17 ended FAILED without a result"}))
    crashed = out / "runs/only/seed-1"
    crashed.mkdir(parents=True)
    (crashed / "config.yaml").write_text("")
    (crashed / "error.txt").write_text("Traceback ...")
    rows = {r["seed"]: r for r in run_statuses(spec, out, runs=runs, ask_slurm=False)}
    assert (rows[0]["state"], rows[0]["job"], rows[0]["log"]) == ("failed", "17", "/logs/17_0_log.err")
    assert (rows[1]["state"], rows[1]["job"], rows[1]["log"]) == ("failed", None, str(crashed / "error.txt"))
