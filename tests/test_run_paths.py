"""Run folders work from any directory; overrides anywhere on the command line; a garbled log does not block a
resume."""

from __future__ import annotations

import csv
import shutil

import pytest
import yaml

from conftest import FAST
from prism.cli.evaluate import main as eval_main
from prism.cli.train import main as train_main
from prism.engine.checkpoint import load_checkpoint
from prism.engine.metrics_log import CsvLog


@pytest.mark.slow
def test_relative_data_path_is_recorded_absolute_and_the_run_works_elsewhere(tiny_cache, tmp_path, monkeypatch,
                                                                              capsys):
    here, elsewhere = tmp_path / "here", tmp_path / "elsewhere"
    (here / "data").mkdir(parents=True)
    elsewhere.mkdir()
    shutil.copy(tiny_cache, here / "data" / "c.h5")
    monkeypatch.chdir(here)
    # overrides before, between and after flags
    argv = ["train.steps=2", "--no-eval", *FAST[:4], "--data", "data/c.h5", "train.loggers=[csv]", "-o", "run",
            *FAST[4:], "train.steps=2"]
    assert train_main(argv) == 0
    recorded = yaml.safe_load((here / "run" / "config.yaml").read_text())["data"]["cache"]
    assert recorded == str(here / "data" / "c.h5")
    monkeypatch.chdir(elsewhere)
    capsys.readouterr()
    assert eval_main([str(here / "run"), "--max-cases", "1", "--no-hd95", "--no-heatmap"]) == 0
    assert "evaluate: 1/1 cases" in capsys.readouterr().err  # progress, on stderr (the table is on stdout)
    assert (here / "run" / "eval.json").is_file()
    assert train_main(["--resume", str(here / "run"), "train.steps=3", "--no-eval"]) == 0
    assert load_checkpoint(here / "run" / "last.pt")["step"] == 3
    assert list(elsewhere.iterdir()) == []  # nothing written where the commands ran


def test_a_log_without_header_is_kept_aside_on_resume(tmp_path):
    log = tmp_path / "train_log.csv"
    log.write_text("3,0.1,0.5\n4,0.1,0.4\n")  # rows without a header (what two writers used to leave)
    writer = CsvLog(log, resume_step=3)
    writer.write({"step": 4, "lr": 0.1, "loss": 0.3})
    with open(log, newline="") as fh:
        assert list(csv.DictReader(fh)) == [{"step": "4", "lr": "0.1", "loss": "0.3"}]
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("train_log.csv.unreadable-")]
    assert len(aside) == 1 and aside[0].read_text() == "3,0.1,0.5\n4,0.1,0.4\n"


def test_piped_output_is_not_wrapped_at_80_columns(capsys, monkeypatch):
    from prism.cli.common import stdout_console

    monkeypatch.delenv("COLUMNS", raising=False)
    line = "run folder: " + "/very/long/path" * 10 + "  device: cpu  strategy: standard"
    stdout_console().print(line)
    assert capsys.readouterr().out == line + "\n"
