"""A run folder is never overwritten by accident: -o on a folder that holds a run is refused in one line (resume,
another folder, or --overwrite, which removes the old run's files first)."""

from __future__ import annotations

import pytest

from conftest import FAST, fast_config
from prism.cli.train import main as train_main
from prism.engine.checkpoint import load_checkpoint
from prism.engine.trainer import CHECKPOINT_NAME, Trainer
from prism.errors import ConfigError

pytestmark = pytest.mark.slow  # every test here trains a model or spawns a process

ARGS = ["--no-eval", *FAST, "train.steps=3", "train.loggers=[csv]"]


def _snapshot(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file() and p.name != ".prism-train.lock"}


@pytest.fixture
def finished_run(tiny_cache, tmp_path):
    run = tmp_path / "run"
    assert train_main(["--data", str(tiny_cache), "-o", str(run), *ARGS]) == 0
    (run / "eval.json").write_text("{}")  # an evaluation of those weights
    (run / "notes.txt").write_text("mine")  # not prism's
    return run


def test_output_on_a_folder_holding_a_run_is_refused_and_changes_nothing(tiny_cache, finished_run, capsys):
    before = _snapshot(finished_run)
    capsys.readouterr()
    code = train_main(["--data", str(tiny_cache), "-o", str(finished_run), *ARGS, "train.steps=5"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0] == (f"prism-train: error: {finished_run}: holds a run (last.pt at step 3); resume it (prism-train "
                      f"--resume {finished_run}), choose another run folder, or overwrite it (--overwrite, "
                      "Trainer(overwrite=True)), which removes its files first")
    assert _snapshot(finished_run) == before


def test_overwrite_removes_the_old_runs_files_first(tiny_cache, finished_run):
    assert train_main(["--data", str(tiny_cache), "-o", str(finished_run), "--overwrite", *ARGS,
                       "train.steps=2"]) == 0
    assert load_checkpoint(finished_run / CHECKPOINT_NAME)["step"] == 2
    assert not (finished_run / "eval.json").exists()  # the old evaluation went with the old weights
    assert (finished_run / "notes.txt").read_text() == "mine"
    assert (finished_run / "train_log.csv").read_text().splitlines()[-1].startswith("2,")


def test_overwrite_and_resume_exclude_each_other(finished_run, capsys):
    assert train_main(["--resume", str(finished_run), "--overwrite"]) == 2
    assert "cannot be combined with --overwrite" in capsys.readouterr().err


def test_the_python_trainer_refuses_too_and_overwrites_when_asked(tiny_cache, finished_run):
    cfg = fast_config("train.steps=2", cache=tiny_cache)
    with pytest.raises(ConfigError, match="holds a run"):
        Trainer(cfg, finished_run, cache_path=tiny_cache)
    trainer = Trainer(cfg, finished_run, cache_path=tiny_cache, overwrite=True)
    assert not (finished_run / CHECKPOINT_NAME).exists()
    trainer.fit()
    trainer.close()
    assert load_checkpoint(finished_run / CHECKPOINT_NAME)["step"] == 2


def test_a_folder_whose_run_never_wrote_a_checkpoint_is_reused(tiny_cache, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("{}\n")  # what a run killed during its first steps leaves
    assert train_main(["--data", str(tiny_cache), "-o", str(run), *ARGS]) == 0
    assert load_checkpoint(run / CHECKPOINT_NAME)["step"] == 3
