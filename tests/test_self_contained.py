"""The repository speaks of itself alone: what it cites is public (a paper, a peer's repository and file), never a
file beside the checkout, a tracker's issue number or the history of its own development."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: words that point outside the repository or into its development history
FORBIDDEN = re.compile(
    r"\.\./shared|(?-i:\bANCHORS\b|\bARCHITECTURE\.md\b)|\bissues? #?\d+\b|\bstop \d+\b|\bstop-\d+\b"
    r"|\b(this|a|the|previous|earlier|next) session\b|\bsessions\b",
    re.IGNORECASE,
)
#: where history is the point (the changelog), and this file (which must spell the patterns)
EXEMPT = {"CHANGELOG.md", "tests/test_self_contained.py"}
TEXT_SUFFIXES = {".py", ".md", ".yaml", ".yml", ".toml", ".sh", ".txt", ".cfg", ".ini", ""}


def tracked_files() -> list[Path]:
    try:
        out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return [ROOT / line for line in out.splitlines() if line]


def offending_lines(text: str) -> list[tuple[int, str]]:
    # pytest's fixture scope "session" is pytest's word, not development history
    return [(i, line.strip()) for i, line in enumerate(text.splitlines(), 1)
            if FORBIDDEN.search(line.replace('scope="session"', ""))]


def test_the_pattern_catches_what_it_should():
    for bad in ("see ../shared/ANCHORS.md", "as issue 13 asked", "measured in stop 8", "built in this session",
                "(issue #4)", "the ANCHORS file"):
        assert offending_lines(bad), bad
    for fine in ('@pytest.fixture(scope="session")', "the preemption tutorial", "stop signals", "tissue 3",
                 "validation: anchors: warn"):
        assert not offending_lines(fine), fine


@pytest.mark.slow
def test_no_file_points_outside_the_repository_or_into_its_history():
    found = []
    for path in tracked_files():
        rel = path.relative_to(ROOT).as_posix()
        if rel in EXEMPT or path.suffix not in TEXT_SUFFIXES or not path.is_file():
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        found += [f"{rel}:{i}: {line[:100]}" for i, line in offending_lines(text)]
    assert not found, "\n".join(found)


def test_the_passion_fixtures_are_vendored_with_their_source():
    folder = ROOT / "tests" / "fixtures" / "passion"
    assert (folder / "README.md").read_text().count("github.com/Jun-Jie-Shi/PASSION") == 1
    assert len(list(folder.glob("*.csv"))) == 3
