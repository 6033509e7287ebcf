"""Experiment trackers as plugins (train.loggers): each built-in logger's files, read back with the tracker's own
format (CSV, TensorBoard event files, MLflow's file store layout, the W&B offline run's record log), hold the
scalars the run logged; a third party's logger installed from its own package logs a run; the conformance kit
passes the built-in loggers and fails broken ones; the deprecated train.tensorboard flag still loads; mistakes
are one line."""

from __future__ import annotations

import csv
import json
import os
import random
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import FAST, fast_config
from prism.cli.train import main as train_main
from prism.config import build_config
from prism.data_tools.synthetic import SynthSettings, write_synthetic_cache
from prism.engine.checkpoint import load_checkpoint
from prism.engine.observers import Observer
from prism.engine.tracking import LoggerObserver
from prism.engine.trainer import CHECKPOINT_NAME, Trainer
from prism.errors import ConfigError, PluginError
from prism.logger import CsvLog, Logger, flatten
from prism.testing import ConformanceError, check_logger

ROOT = Path(__file__).resolve().parents[1]


def importable(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


@pytest.fixture(scope="module")
def val_cache(tmp_path_factory):
    path = tmp_path_factory.mktemp("val") / "val.h5"
    write_synthetic_cache(str(path), SynthSettings(cases=8, shape=(24, 24, 24), seed=5), test_fraction=0.25,
                          val_fraction=0.25)
    return path


@pytest.fixture(scope="module")
def logged_run(val_cache, tmp_path_factory):
    """One run with every logger this environment has: 4 steps, rows at 2 and 4, validations at 2 and 4, and the
    evaluation. Returns (run folder, the rows logged, the validation scores by step)."""
    root = tmp_path_factory.mktemp("logged")
    env = {"WANDB_CONFIG_DIR": root / "wandb-config", "WANDB_CACHE_DIR": root / "wandb-cache",
           "WANDB_DATA_DIR": root / "wandb-data"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update({k: str(v) for k, v in env.items()})
    loggers = ["csv", "tensorboard"] + [n for n in ("mlflow", "wandb") if importable(n)]
    cfg = fast_config("train.steps=4", "train.log_every=2", "train.val_every=2", "train.val_cases=1",
                      f"train.loggers={json.dumps(loggers)}", "eval.max_cases=1", "eval.hd95=false", cache=val_cache)
    run = root / "run"
    try:
        trainer = Trainer(cfg, run, cache_path=val_cache)
        scores: dict[int, float] = {}

        class Scores(Observer):
            def on_validation(self, trainer, score, best):
                scores[trainer.ctx.step] = score

        trainer.add_observer(Scores())
        rows = trainer.fit()
        report = trainer.evaluate()
        trainer.close()
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    assert report is not None and [int(r["step"]) for r in rows] == [2, 4]
    return run, rows, scores


def _train_values(rows):
    return {int(r["step"]): {k: v for k, v in r.items() if k != "step"} for r in rows}


# ---- csv ------------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_csv_files_hold_the_rows_and_the_validation_scores(logged_run):
    run, rows, scores = logged_run
    with open(run / "train_log.csv", newline="") as fh:
        logged = list(csv.DictReader(fh))
    assert [{k: float(v) for k, v in r.items()} for r in logged] == [{k: float(v) for k, v in r.items()}
                                                                    for r in rows]
    with open(run / "val_log.csv", newline="") as fh:
        val = {int(r["step"]): float(r["val_dice"]) for r in csv.DictReader(fh)}
    assert val == scores and set(scores) == {2, 4}


# ---- tensorboard --------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_tensorboard_event_files_hold_the_scalars_and_the_heatmap(logged_run):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run, rows, scores = logged_run
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    events.Reload()
    for step, values in _train_values(rows).items():
        for key in ("loss", "lr", "fuse"):
            found = {e.step: e.value for e in events.Scalars(f"train/{key}")}
            assert found[step] == pytest.approx(values[key], rel=1e-6), (key, step)  # stored as float32
    assert {e.step: e.value for e in events.Scalars("val/val_dice")} == pytest.approx(scores, rel=1e-6)
    assert any(tag.startswith("eval/dice/") for tag in events.Tags()["scalars"])
    (image,) = events.Images("eval_dice")
    assert image.width > 0 and image.height > 0


# ---- mlflow -------------------------------------------------------------------------------------------------------

def _mlflow_run(store: Path) -> Path:
    (meta,) = [p.parent for p in store.glob("*/*/meta.yaml") if (p.parent / "metrics").is_dir()]
    return meta


def _mlflow_metric(run: Path, key: str) -> dict[int, float]:
    """A metric from the file store: ``metrics/<key>``, one ``timestamp value step`` line per value."""
    lines = (run / "metrics" / key).read_text().split("\n")
    return {int(step): float(value) for _, value, step in (line.split() for line in lines if line)}


@pytest.mark.slow
def test_mlflow_file_store_holds_the_params_metrics_report_and_heatmap(logged_run):
    pytest.importorskip("mlflow")
    run, rows, scores = logged_run
    mlrun = _mlflow_run(run / "mlruns")
    for key in ("loss", "lr", "fuse", "samples_per_s"):
        assert _mlflow_metric(mlrun, f"train/{key}") == {s: v[key] for s, v in _train_values(rows).items()}
    assert _mlflow_metric(mlrun, "val/val_dice") == scores
    evaluated = json.loads((run / "eval.json").read_text())
    assert _mlflow_metric(mlrun, "eval/dice/WT") == pytest.approx({0: evaluated["mean"]["dice"]["WT"]})
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert (mlrun / "params" / "optim.lr").read_text() == str(config["optim"]["lr"])
    assert (mlrun / "params" / "train.loggers.0.name").read_text() == "csv"
    artifacts = {p.name for p in (mlrun / "artifacts").iterdir()}
    assert {"eval.json", "eval.md", "eval_dice.png"} <= artifacts
    assert yaml.safe_load((mlrun / "meta.yaml").read_text())["status"] == 3  # RunStatus.FINISHED
    assert not (run.parent / "mlruns").exists() and not Path("mlruns").exists()


@pytest.mark.slow
def test_a_resumed_run_continues_the_same_mlflow_run(tiny_cache, tmp_path):
    pytest.importorskip("mlflow")
    cfg = fast_config("train.steps=4", "train.log_every=2", "train.checkpoint_every=2",
                      "train.loggers=[csv, mlflow]", cache=tiny_cache)
    run = tmp_path / "run"
    first = Trainer(cfg, run, cache_path=tiny_cache)
    first.fit(stop_at=2)
    first.close()
    run_id = load_checkpoint(run / CHECKPOINT_NAME)["observers"]["mlflow"]["run_id"]
    second = Trainer(cfg, run, cache_path=tiny_cache, resume=True)
    rows = second.fit()
    second.close()
    mlrun = _mlflow_run(run / "mlruns")
    assert mlrun.name == run_id
    assert sorted(_mlflow_metric(mlrun, "train/loss")) == [2, 4]
    assert _mlflow_metric(mlrun, "train/loss")[4] == rows[-1]["loss"]


# ---- wandb --------------------------------------------------------------------------------------------------------

def wandb_records(path: Path):
    """The protobuf records of a W&B run file: the LevelDB log format (github.com/google/leveldb,
    doc/log_format.md: 32 KiB blocks of records, each a 7-byte header ``crc32 u32, length u16, type u8``, type
    FULL=1, FIRST=2, MIDDLE=3, LAST=4) after W&B's own 7-byte file header ``":W&B", magic u16, version u8``."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    block, pos, chunks = 32768, 7, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:  # zero padding up to the block's end
            pos += left
            continue
        chunks += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunks)
            chunks = b""
            yield record


def _wandb_history(run: Path) -> dict[int, dict[str, object]]:
    (path,) = run.glob("wandb/offline-run-*/run-*.wandb")
    history: dict[int, dict[str, object]] = {}
    for record in wandb_records(path):
        if record.WhichOneof("record_type") == "history":
            row = history.setdefault(record.history.step.num, {})
            for item in record.history.item:
                row[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
    return history


@pytest.mark.slow
def test_wandb_offline_run_holds_the_scalars(logged_run):
    pytest.importorskip("wandb")
    run, rows, scores = logged_run
    history = _wandb_history(run)
    for step, values in _train_values(rows).items():
        for key in ("loss", "lr", "fuse"):
            assert history[step][f"train/{key}"] == values[key], (key, step)
    assert {s: history[s]["val/val_dice"] for s in scores} == scores
    image = history[4]["eval_dice/path"]  # the heatmap, logged at the last step, its file in the run's folder
    assert list(run.glob(f"wandb/offline-run-*/files/{image}"))


# ---- a third party's logger ---------------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_logger_from_its_own_package_logs_a_run(tiny_cache, tmp_path):
    site = tmp_path / "site"
    package = tmp_path / "prism-tiny"
    shutil.copytree(ROOT / "tutorials" / "plugin_package", package)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target",
                    str(site), str(package)], check=True, cwd=tmp_path)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    run = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "prism.cli.train", "--data", str(tiny_cache), "-o", str(run),
                           "--no-eval", *FAST, "train.steps=4", "train.log_every=2",
                           "train.loggers=[csv, {name: jsonl, options: {filename: s.jsonl}}]"],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in (run / "s.jsonl").read_text().splitlines()]
    with open(run / "train_log.csv", newline="") as fh:
        logged = list(csv.DictReader(fh))
    assert [(d["group"], d["step"]) for d in lines] == [("train", 2), ("train", 4)]
    for line, row in zip(lines, logged, strict=True):
        assert line["loss"] == pytest.approx(float(row["loss"]), rel=1e-12)
    info = json.loads((run / "run_info.json").read_text())
    assert {"kind": "logger", "name": "jsonl", "distribution": "prism-tiny"}.items() <= next(
        p for p in info["plugins"] if p["name"] == "jsonl").items()


# ---- the conformance kit --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["csv", "tensorboard", "mlflow",
                                  pytest.param("wandb", marks=pytest.mark.slow)])  # wandb starts its service
def test_the_built_in_loggers_pass_the_conformance_kit(name, tmp_path, monkeypatch):
    if name in ("mlflow", "wandb"):
        pytest.importorskip(name)
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / var))
    report = check_logger(name)
    assert report.ok and len(report.passed) == 5


class LoggerThatStrays(Logger):
    """Writes into the working directory, and keeps a Python object in its state."""

    def log_scalars(self, group, values, step):
        Path("stray.txt").write_text("oops")

    def state_dict(self):
        return {"when": object()}


def test_the_kit_names_what_a_broken_logger_breaks(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    report = check_logger(LoggerThatStrays, raise_on_failure=False)
    assert set(report.failed) == {"files_stay_in_the_run_folder", "state_round_trip", "resumes"}
    assert "wrote ['stray.txt'] into the working directory" in report.failed["files_stay_in_the_run_folder"]
    with pytest.raises(ConformanceError, match="failed 3 of 5 conformance checks"):
        check_logger(LoggerThatStrays)
    not_a_logger = check_logger(lambda: object(), raise_on_failure=False)
    assert "is not a prism.logger.Logger" in not_a_logger.failed["builds"]


# ---- the engine's side --------------------------------------------------------------------------------------------

class Drawing(Logger):
    """A tracker that draws from every global generator (MLflow draws from Python's)."""

    def log_scalars(self, group, values, step):
        random.random()
        np.random.rand()
        torch.rand(1)


def test_a_logger_cannot_change_what_the_run_draws():
    observer = LoggerObserver("drawing", Drawing())
    observer.started = True
    before = random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state()
    observer.on_log(None, {"step": 1.0, "loss": 0.5})
    assert random.getstate() == before[0]
    assert (np.random.get_state()[1] == before[1]).all() and torch.equal(torch.get_rng_state(), before[2])


def test_flatten_gives_dotted_names_and_indexes_lists_of_sections():
    data = {"optim": {"lr": 0.1}, "losses": [{"name": "fuse"}], "data": {"patch_size": [16, 16, 16]},
            "model": {"options": {}}}
    assert flatten(data) == {"optim.lr": 0.1, "losses.0.name": "fuse", "data.patch_size": [16, 16, 16],
                             "model.options": {}}


def test_csv_log_drops_the_rows_after_the_resume_step(tmp_path):
    path = tmp_path / "train_log.csv"
    log = CsvLog(path)
    for step in (1, 2, 3):
        log.write({"step": step, "loss": step / 10})
    CsvLog(path, resume_step=2).write({"step": 3, "loss": 0.5})
    with open(path, newline="") as fh:
        assert [(r["step"], r["loss"]) for r in csv.DictReader(fh)] == [("1", "0.1"), ("2", "0.2"), ("3", "0.5")]


# ---- config ---------------------------------------------------------------------------------------------------------

def test_loggers_are_names_or_names_with_options_and_default_to_csv_and_tensorboard():
    assert [c.name for c in build_config().train.loggers] == ["csv", "tensorboard"]
    cfg = build_config(None, ["train.loggers=[csv, {name: mlflow, options: {experiment: brats}}]"])
    assert [(c.name, c.options) for c in cfg.train.loggers] == [("csv", {}), ("mlflow", {"experiment": "brats"})]


@pytest.mark.parametrize(("overrides", "expected"), [
    (["train.tensorboard=false"], ["csv"]),
    (["train.tensorboard=true"], ["csv", "tensorboard"]),
    (["train.loggers=[csv]", "train.tensorboard=true"], ["csv", "tensorboard"]),
    (["train.loggers=[tensorboard, mlflow]", "train.tensorboard=false"], ["mlflow"]),
])
def test_the_deprecated_tensorboard_flag_still_loads_onto_the_loggers(overrides, expected):
    with pytest.warns(DeprecationWarning, match="train.tensorboard is deprecated"):
        cfg = build_config(None, overrides)
    assert [c.name for c in cfg.train.loggers] == expected


def test_an_old_run_config_with_the_flag_loads(tmp_path):
    old = yaml.safe_load(build_config().model_dump_json())
    old["train"].pop("loggers")
    old["train"]["tensorboard"] = False
    with pytest.warns(DeprecationWarning):
        cfg = build_config(old)
    assert [c.name for c in cfg.train.loggers] == ["csv"]


@pytest.mark.parametrize(("overrides", "message"), [
    (["train.loggers=[csv, csv]"], "train.loggers: Value error, logger 'csv' is listed more than once"),
    (["train.tensorboard=maybe"], "tensorboard (deprecated: use train.loggers) must be true or false"),
    (["train.loggers=[{options: {}}]"], "train.loggers.0.name: Field required"),
])
def test_logger_config_mistakes_are_one_line(overrides, message):
    with pytest.raises(ConfigError) as err:
        build_config(None, overrides)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_an_unknown_logger_is_one_line_with_the_close_names_and_nothing_is_written(tiny_cache, tmp_path,
                                                                                   monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code = train_main(["--data", str(tiny_cache), "-o", str(tmp_path / "out"), "--no-eval", *FAST,
                       "train.loggers=[csv, mlfow]"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "train.loggers.1.name: unknown logger 'mlfow'; did you mean 'mlflow'?" in err[0]
    assert list(tmp_path.iterdir()) == []


def test_a_logger_option_is_checked_before_anything_is_built(tiny_cache, tmp_path):
    cfg = fast_config("train.loggers=[{name: wandb, options: {mode: cloud}}]", cache=tiny_cache)
    with pytest.raises(PluginError, match="train.loggers.0.options.mode"):
        Trainer(cfg, tmp_path / "run", cache_path=tiny_cache)
    assert not (tmp_path / "run").exists()


def test_a_missing_tracker_package_is_one_line_naming_the_extra(tiny_cache, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # import mlflow now raises ImportError
    cfg = fast_config("train.loggers=[mlflow]", cache=tiny_cache)
    with pytest.raises(ConfigError) as err:
        Trainer(cfg, tmp_path / "run", cache_path=tiny_cache)
    assert "logger 'mlflow' needs the mlflow package: pip install 'prism-seg[mlflow]'" in str(err.value)
    assert "\n" not in str(err.value) and not (tmp_path / "run").exists()
