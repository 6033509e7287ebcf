"""The console scripts as a user meets them: help, one-line errors with exit code 2, a full tiny run."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import FAST
from prism.cli import data as data_cli
from prism.cli import evaluate as eval_cli
from prism.cli import plugins as plugins_cli
from prism.cli import train as train_cli


@pytest.mark.slow
@pytest.mark.parametrize("module", ["train", "evaluate", "data", "plugins"])
def test_help_works_as_console_script(module):
    out = subprocess.run([sys.executable, "-m", f"prism.cli.{module}", "--help"], capture_output=True, text=True,
                         check=True).stdout
    assert out.startswith("usage: prism-")


def test_train_help_lists_every_flag(capsys):
    with pytest.raises(SystemExit) as exit_:
        train_cli.main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--config", "--strategy", "--data", "--output", "--steps", "--device", "--resume", "--no-eval",
                 "FIELD=VALUE"):
        assert flag in out


def one_line_error(capsys, code, prog):
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith(f"{prog}: error: ") and "\n" not in err and "Traceback" not in err
    return err


def test_unknown_strategy_is_one_line(capsys, tiny_cache, tmp_path):
    code = train_cli.main(["--strategy", "mamll", "--data", str(tiny_cache), "-o", str(tmp_path / "r")])
    err = one_line_error(capsys, code, "prism-train")
    assert "strategy.name: unknown meta-strategy 'mamll'" in err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("args, message", [
    (["optim.lr=abc"], "optim.lr: Input should be a valid number"),
    (["--data", "/nonexistent/cache.h5"], "/nonexistent/cache.h5: cache file not found"),
    (["--resume", "/nonexistent/run"], "not a prism run folder"),
    (["model.name=unet3"], "model.name: unknown backbone 'unet3'"),
])
def test_user_mistakes_are_one_line(capsys, args, message):
    err = one_line_error(capsys, train_cli.main(args), "prism-train")
    assert message in err


def test_data_cli_synth_and_info(capsys, tmp_path):
    path = tmp_path / "s.h5"
    assert data_cli.main(["synth", "-o", str(path), "--cases", "3", "--shape", "16", "16", "16"]) == 0
    capsys.readouterr()
    assert data_cli.main(["info", str(path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["cases"] == 3 and info["modalities"] == ["flair", "t1ce", "t1", "t2"] and info["format_version"] == 1
    err = one_line_error(capsys, data_cli.main(["info", str(tmp_path / "none.h5")]), "prism-data")
    assert "cache file not found" in err


@pytest.mark.slow
def test_train_then_eval_end_to_end(capsys, tiny_cache, tmp_path):
    run = tmp_path / "run"
    code = train_cli.main(["--data", str(tiny_cache), "-o", str(run), *FAST, "train.steps=2"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "FLAIR+T1ce+T1+T2" in out and "Mean" in out
    report = json.loads((run / "eval.json").read_text())
    assert [c["index"] for c in report["combinations"]] == list(range(15))
    assert report["regions"] == ["WT", "TC", "ET"] and len(report["cases"]) == 2
    for name in ("config.yaml", "run_info.json", "last.pt", "train_log.csv", "eval.md"):
        assert (run / name).is_file(), name
    (run / "eval.json").unlink()
    assert eval_cli.main([str(run)]) == 0
    again = json.loads((run / "eval.json").read_text())["combinations"]
    # the same figures up to near-tie voxels: the reloaded model runs in another memory format than the trained one
    assert [(c["index"], c["name"], c["num_cases"]) for c in again] == [
        (c["index"], c["name"], c["num_cases"]) for c in report["combinations"]]
    for a, b in zip(again, report["combinations"], strict=True):
        assert a["dice"] == pytest.approx(b["dice"], abs=1e-3)
    # continue the same run for two more steps
    assert train_cli.main(["--resume", str(run), "train.steps=4", "--no-eval"]) == 0


def test_plugins_cli_in_process(capsys):
    assert plugins_cli.main([]) == 0
    out = capsys.readouterr().out
    assert "multi_unet" in out and "standard" in out and "random" in out and "fuse" in out


def test_resume_refuses_flags_that_would_be_ignored(capsys, tmp_path):
    err = one_line_error(capsys, train_cli.main(["--resume", str(tmp_path), "--preset", "maml"]), "prism-train")
    assert "cannot be combined with --preset" in err
