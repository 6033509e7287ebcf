"""Mistakes in what evaluation is given, checked at the edge: 22 cases. Each exits with status 2, prints exactly
one line on stderr naming the flag, field or file, and leaves the run folder, the cache and the working directory
as they were (no report written, nothing allocated for a window that cannot fit).

The CLI's ``main(argv)`` runs in-process, in an empty temporary working directory.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import h5py
import pytest

from conftest import FAST, tree_state
from prism.cli.evaluate import main as eval_main
from prism.cli.train import main as train_main


@dataclass
class Case:
    id: str
    argv: Callable[[Path, Path, Path], list[str]]  # (run, cache, cwd) -> arguments of prism-eval
    culprit: str  # regex the one line must match
    setup: Callable[[Path, Path], None] | None = None  # (cache, cwd): builds a broken input before the snapshot


def _zero_spacing(cache: Path, cwd: Path) -> None:
    shutil.copy(cache, cwd / "zero.h5")
    with h5py.File(cwd / "zero.h5", "r+") as f:
        for case in f["cases"]:
            f[f"cases/{case}"].attrs["spacing"] = [0.0, 1.0, 1.0]


def ev(*extra: str) -> Callable[[Path, Path, Path], list[str]]:
    return lambda run, cache, cwd: [str(run), "--no-heatmap", *extra]


def adapt(*extra: str) -> Callable[[Path, Path, Path], list[str]]:
    return lambda run, cache, cwd: ["adapt", str(run), "--site", "site0", "--allow-seen-site", *extra]


def fewshot(*extra: str) -> Callable[[Path, Path, Path], list[str]]:
    return lambda run, cache, cwd: ["fewshot", str(run), "--classes", "3", *extra]


CASES = [
    # resources: the window and the windows per pass, against the volume and the memory, before allocating
    Case("window-larger-than-volume", ev("--window", "512", "512", "512"),
         r"eval\.window: \[512, 512, 512\] is larger than the volume \[24, 24, 24\]"),
    Case("sw-batch-beyond-memory", ev("--window", "16", "16", "16", "--sw-batch-size", "100000000"),
         r"eval\.window .*sw_batch_size 100000000 .* GiB .* available"),
    Case("sw-batch-zero", ev("--sw-batch-size", "0"), r"argument --sw-batch-size: must be >= 1, got 0"),
    Case("window-zero", ev("--window", "0", "16", "16"), r"argument --window: must be >= 1, got 0"),
    Case("overlap-nan", ev("--overlap", "nan"), r"argument --overlap: must be a finite number"),
    Case("et-postprocess-negative", ev("--et-postprocess", "-1"), r"argument --et-postprocess: must be >= 0"),
    Case("hd95-convention-unknown", ev("--hd95", "panoptica"), r"argument --hd95: invalid choice: 'panoptica'"),
    Case("hd95-empty-negative", ev("--hd95-empty", "-3"), r"argument --hd95-empty: must be a finite number"),
    Case("hd95-empty-inf", ev("--hd95-empty", "inf"), r"argument --hd95-empty: must be a finite number"),
    Case("adapt-lr-inf", ev("--adapt-site", "site0", "--adapt-lr", "inf"), r"argument --adapt-lr: must be a finite"),
    Case("adapt-patch-zero", ev("--adapt-site", "site0", "--adapt-patch", "0", "0", "0"),
         r"argument --adapt-patch: must be >= 1"),
    # a spacing of 0 would make every distance 0 mm
    Case("spacing-zero", lambda run, cache, cwd: [str(run), "--no-heatmap", "--data", str(cwd / "zero.h5")],
         r"zero\.h5: case 'synth_\d+' is corrupted: attribute 'spacing' must be three positive sizes", _zero_spacing),
    # prism-eval adapt
    Case("adapt-patch-0", adapt("--patch", "0", "0", "0"), r"argument --patch: must be >= 1, got 0"),
    Case("adapt-lr-nan", adapt("--lr", "nan"), r"argument --lr: must be a finite number in \(0, inf\)"),
    Case("adapt-lr-inf-curve", adapt("--lr", "inf"), r"argument --lr: must be a finite number"),
    Case("adapt-lr-zero", adapt("--lr", "0"), r"argument --lr: must be a finite number in \(0, inf\), got 0"),
    Case("adapt-max-query-negative", adapt("--max-query", "-1"), r"argument --max-query: must be >= 1, got -1"),
    Case("adapt-draws-zero", adapt("--draws", "0"), r"argument --draws: must be >= 1"),
    # prism-eval fewshot
    Case("fewshot-lr-nan", fewshot("--lr", "nan"), r"argument --lr: must be a finite number"),
    Case("fewshot-lr-inf", fewshot("--lr", "inf"), r"argument --lr: must be a finite number"),
    Case("fewshot-max-query-negative", fewshot("--max-query", "-2"), r"argument --max-query: must be >= 1, got -2"),
    # prism-eval compare
    Case("compare-confidence", lambda run, cache, cwd: ["compare", str(run), str(run), "--confidence", "1.5"],
         r"argument --confidence: must be a finite number in \(0, 1\)"),
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_cache):
    run = tmp_path_factory.mktemp("bad_eval") / "run"
    assert train_main(["--data", str(tiny_cache), "-o", str(run), "--no-eval", *FAST, "train.steps=1",
                       "train.loggers=[csv]"]) == 0
    return run


def test_the_docstring_counts_the_cases():
    assert f": {len(CASES)} cases." in __doc__ and len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_mistake_is_one_line_exit_2_and_changes_nothing(case, trained, tiny_cache, tmp_path, monkeypatch, capsys):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    if case.setup is not None:
        case.setup(tiny_cache, cwd)
    before = tree_state(cwd, trained, tiny_cache.parent)
    capsys.readouterr()
    try:
        code = eval_main(case.argv(trained, tiny_cache, cwd))
    except SystemExit as exc:  # argparse
        code = exc.code
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, err[-3000:]
    assert len(lines) == 1, err[-3000:]
    assert re.search(case.culprit, lines[0]), lines[0]
    assert "Traceback" not in err
    assert tree_state(cwd, trained, tiny_cache.parent) == before
