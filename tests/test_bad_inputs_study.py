"""The study's catalogue of user mistakes (17 cases): each exits with status 2, prints exactly one line on stderr
naming the culprit (file, field, flag or folder), and leaves nothing new or changed on disk.

The spec cases run ``prism-study`` in-process with an empty temporary working directory; the read-only cases
mount a read-only tmpfs and are skipped where mounting is not allowed (not root, some containers).
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import yaml

from conftest import FAST, tree_state
from prism.cli.study import main as study_main

SPEC = {
    "name": "bad",
    "data": {"synthetic": {"cases": 6, "shape": [16, 16, 16], "seed": 3, "test_fraction": 0.34}},
    "overrides": [*FAST, "train.steps=1", "eval.hd95=false", "train.loggers=[csv]"],
    "arms": {"a": None, "b": ["optim.lr=0.02"]},
    "seeds": [0],
}


def spec_with(**changes) -> str:
    return yaml.safe_dump({**SPEC, **changes}, sort_keys=False)


DUPLICATE_ARM = spec_with().replace("  b:\n", "  a:\n")  # two arms named a: YAML alone keeps the second
DUPLICATE_SEEDS = spec_with() + "seeds: [1]\n"


@dataclass
class Mistake:
    """``argv`` (``{cwd}``, ``{spec}``, ``{ro}`` filled) must fail with one stderr line matching ``culprit``;
    ``spec``: the spec file's content (bytes are written as they are); ``mount``: needs the read-only tmpfs."""

    id: str
    argv: list[str]
    culprit: str
    spec: str | bytes = ""
    mount: bool = False


def M(id_: str, argv: list[str], culprit: str, spec: str | bytes | None = None, mount: bool = False) -> Mistake:
    return Mistake(id_, argv, culprit, spec_with() if spec is None else spec, mount)


RUN = ["run", "{spec}", "-o", "{cwd}/study"]
CATALOGUE = [
    M("spec-not-utf8", RUN, r"spec\.yaml: line 2: not UTF-8 text \(byte 0xe9\)",
      spec=b"name: bad\ndescription: caf\xe9\n" + spec_with(name="x").encode()),
    M("spec-missing", ["run", "{cwd}/nope.yaml", "-o", "{cwd}/study"], r"nope\.yaml: cannot read the study spec"),
    M("shape-too-small", RUN, r"data\.synthetic\.shape: every size must be at least 8 voxels",
      spec=spec_with(data={"synthetic": {"cases": 6, "shape": [4, 4, 4]}})),
    M("shape-negative", RUN, r"data\.synthetic\.shape: every size must be at least 8 voxels",
      spec=spec_with(data={"synthetic": {"cases": 6, "shape": [-16, 16, 16]}})),
    M("shape-zero", RUN, r"data\.synthetic\.shape: every size must be at least 8 voxels",
      spec=spec_with(data={"synthetic": {"cases": 6, "shape": [16, 0, 16]}})),
    M("shape-smaller-than-patch", RUN,
      r"data\.synthetic\.shape: \[12, 12, 12\] is smaller than arm 'a''s data\.patch_size \[16, 16, 16\]",
      spec=spec_with(data={"synthetic": {"cases": 6, "shape": [12, 12, 12]}})),
    M("shape-two-sizes", RUN, r"data\.synthetic\.shape",
      spec=spec_with(data={"synthetic": {"cases": 6, "shape": [16, 16]}})),
    M("duplicate-arm", RUN, r"spec\.yaml: line \d+: arms\.a is given twice \(first on line \d+\)", spec=DUPLICATE_ARM),
    M("duplicate-top-level-key", RUN, r"spec\.yaml: line \d+: seeds is given twice", spec=DUPLICATE_SEEDS),
    M("new-folder-on-read-only-mount", ["run", "{spec}", "-o", "{ro}/study"],
      r"ro/study: cannot create the folder: read-only file system", mount=True),
    M("read-only-study-folder", ["run", "{spec}", "-o", "{ro}"], r"ro/study\.yaml: .*read-only file system",
      mount=True),
    M("jobs-zero", [*RUN, "--jobs", "0"], r"--jobs must be >= 1, got 0"),
    M("slurm-option-without-submitit", [*RUN, "--slurm-partition", "gpu"],
      r"--slurm-\* options need --executor submitit"),
    M("unknown-executor", [*RUN, "--executor", "slurm"], r"argument --executor: invalid choice: 'slurm'"),
    M("status-of-a-plain-folder", ["status", "{cwd}"], r"not a study folder \(no study\.yaml"),
    M("report-of-a-plain-folder", ["report", "{cwd}"], r"not a study folder \(no study\.yaml"),
    M("no-command", [], r"the following arguments are required: COMMAND"),
]


@pytest.fixture
def read_only_mount(tmp_path):
    """A fresh read-only tmpfs (skipped where mounting is not allowed)."""
    point = tmp_path / "ro"
    point.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,ro", "tmpfs", str(point)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield point
    subprocess.run(["umount", "-l", str(point)], capture_output=True)


def test_catalogue_count_matches_the_docstring():
    assert f"({len(CATALOGUE)} cases)" in __doc__ and len({m.id for m in CATALOGUE}) == len(CATALOGUE)


#: the mistakes whose check trains a model or starts a process: the slow tier
SLOW_MISTAKES = {"new-folder-on-read-only-mount", "read-only-study-folder"}


@pytest.mark.parametrize("mistake", [pytest.param(m, id=m.id, marks=[pytest.mark.slow] if m.id in SLOW_MISTAKES else [])
                                     for m in CATALOGUE])
def test_study_mistake_is_one_line_exit_2_and_writes_nothing(mistake, tmp_path, monkeypatch, capsys, request):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    ro = request.getfixturevalue("read_only_mount") if mistake.mount else tmp_path / "unused"
    spec = cwd / "spec.yaml"
    if isinstance(mistake.spec, bytes):
        spec.write_bytes(mistake.spec)
    else:
        spec.write_text(mistake.spec)
    fill: Callable[[str], str] = lambda a: a.format(cwd=cwd, spec=spec, ro=ro)  # noqa: E731
    roots = [cwd, ro] if mistake.mount else [cwd]
    before = tree_state(*roots)
    capsys.readouterr()
    try:
        code = study_main([fill(a) for a in mistake.argv])
    except SystemExit as exc:  # argparse
        code = exc.code
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, err[-3000:]
    assert len(lines) == 1, err[-3000:]
    assert re.match(r"prism-study( run)?: error: ", lines[0]) and re.search(mistake.culprit, lines[0]), lines[0]
    assert "Traceback" not in err
    assert tree_state(*roots) == before
