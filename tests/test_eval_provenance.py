"""Reports tied to their checkpoint (file, step, SHA-256 of its bytes), and report files written as one set."""

from __future__ import annotations

import errno
import hashlib
import json
import shutil

import numpy as np
import pytest
import torch

from conftest import fast_config
from prism.atomic import StorageError
from prism.cli import evaluate as eval_cli
from prism.engine.trainer import Trainer
from prism.evaluation import writers
from prism.evaluation.provenance import checkpoint_record, report_matches_checkpoint
from prism.evaluation.results import EvalReport
from prism.evaluation.writers import write_report


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_cache):
    run = tmp_path_factory.mktemp("prov") / "run"
    trainer = Trainer(fast_config("train.steps=2", "eval.max_cases=1", cache=tiny_cache), run, cache_path=tiny_cache)
    trainer.fit()
    trainer.evaluate()
    trainer.close()
    return run


def test_the_record_names_file_step_and_the_hash_of_the_bytes(trained):
    record = checkpoint_record(trained / "last.pt")
    assert record == {"file": "last.pt", "step": 2,
                      "sha256": hashlib.sha256((trained / "last.pt").read_bytes()).hexdigest()}
    assert json.loads((trained / "eval.json").read_text())["checkpoint"] == record  # written by the trainer
    assert "step 2" in (trained / "eval.md").read_text()


def test_report_matches_checkpoint_only_for_the_checkpoint_it_scored(trained, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    assert report_matches_checkpoint(run)
    state = torch.load(run / "last.pt", weights_only=True)
    state["step"] = 5  # training went on: another last.pt
    torch.save(state, run / "last.pt")
    assert not report_matches_checkpoint(run)
    data = json.loads((run / "eval.json").read_text())
    data["checkpoint"] = None  # a report that records no checkpoint is stale
    (run / "eval.json").write_text(json.dumps(data))
    assert not report_matches_checkpoint(run)
    assert not report_matches_checkpoint(run, "adapt.json")  # missing
    (run / "fewshot.json").write_text("[]")  # an older list-shaped report
    assert not report_matches_checkpoint(run, "fewshot.json")
    (run / "last.pt").unlink()
    assert not report_matches_checkpoint(run)


def test_prism_eval_records_the_checkpoint_and_refuses_one_replaced_while_evaluating(trained, tmp_path, capsys,
                                                                                      monkeypatch):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    (run / "eval.json").unlink()
    assert eval_cli.main([str(run), "--no-heatmap", "--max-cases", "1"]) == 0
    assert json.loads((run / "eval.json").read_text())["checkpoint"] == checkpoint_record(run / "last.pt")
    assert report_matches_checkpoint(run)
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}

    import prism.evaluation.report as report_module

    real = report_module.evaluate

    def evaluate_while_training(*args, **kwargs):
        out = real(*args, **kwargs)
        state = torch.load(run / "last.pt", weights_only=True)
        state["step"] = 9
        torch.save(state, run / "last.pt")  # a training process writes a new checkpoint meanwhile
        return out

    monkeypatch.setattr(report_module, "evaluate", evaluate_while_training)
    capsys.readouterr()
    assert eval_cli.main([str(run), "--no-heatmap", "--max-cases", "1"]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]  # after the progress lines
    assert last.startswith("prism-eval: error: ") and "changed while it was being evaluated" in last
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.name != "last.pt"} == \
        {k: v for k, v in before.items() if k != "last.pt"}


def _report(value: float) -> EvalReport:
    return EvalReport(modalities=("a", "b"), regions=("WT",), combinations=["A", "B", "A+B"], case_ids=["c0"],
                      dice=np.full((1, 3, 1), value), combination_masks=[(True, False), (False, True), (True, True)])


def test_a_failed_write_leaves_the_previous_set_whole(tmp_path, monkeypatch):
    write_report(_report(0.5), tmp_path)
    old = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert set(old) == set(writers.REPORT_FILES)

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(writers, "heatmap_figure", lambda report: type("F", (), {"savefig": full_disk})())
    with pytest.raises(StorageError, match="no space left"):
        write_report(_report(0.9), tmp_path)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == old  # no new json/md/csv, no temporary left
    monkeypatch.undo()
    write_report(_report(0.9), tmp_path, heatmap=False)  # a set without a heatmap: the old picture goes
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(set(writers.REPORT_FILES) - {"eval_dice.png"})
    assert json.loads((tmp_path / "eval.json").read_text())["mean"]["dice"]["WT"] == pytest.approx(0.9)
