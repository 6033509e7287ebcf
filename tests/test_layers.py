"""The import-linter contracts (pyproject.toml, checked in CI by .ci/layers) hold, and the layers contract fails on
each kind of cycle it exists to stop: a lower layer importing a higher one (evaluation importing the engine, the
config importing evaluation, the SegOutput contract importing the registry)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = "the core is layered"

#: (module file in the package, the import planted at its end, the violation import-linter must report)
PLANTED = [
    ("evaluation/metrics.py", "from ..engine import trainer", "prism.evaluation.metrics -> prism.engine.trainer"),
    ("config.py", "from .evaluation import options", "prism.config -> prism.evaluation.options"),
    ("outputs.py", "from .registry import core", "prism.outputs -> prism.registry.core"),
]


def package_copy(target: Path) -> Path:
    """The prism package as installed (prism.plugins and prism.data_tools inside it), copied under ``target``."""
    skip = shutil.ignore_patterns("__pycache__")
    shutil.copytree(ROOT / "prism", target / "prism", ignore=skip)
    shutil.copytree(ROOT / "plugins", target / "prism" / "plugins", ignore=skip)
    shutil.copytree(ROOT / "data_tools", target / "prism" / "data_tools", ignore=skip)
    return target


def lint_imports(site: Path, cwd: Path) -> subprocess.CompletedProcess:
    exe = shutil.which("lint-imports") or str(Path(sys.executable).parent / "lint-imports")
    env = {**os.environ, "PYTHONPATH": str(site)}
    return subprocess.run([exe, str(ROOT / "pyproject.toml"), "--no-cache"], capture_output=True,
                          text=True, cwd=cwd, env=env, timeout=300)


@pytest.mark.slow
def test_layers_hold_and_fail_on_a_planted_cycle(tmp_path):
    pytest.importorskip("importlinter")
    site = package_copy(tmp_path / "site")
    clean = lint_imports(site, tmp_path)
    assert clean.returncode == 0, clean.stdout[-3000:]
    assert f"{LAYERS} (contracts < data < runs < evaluation < engine < study < " in " ".join(clean.stdout.split())
    for module, line, violation in PLANTED:
        path = site / "prism" / module
        original = path.read_text()
        path.write_text(original + f"\n{line}  # planted\n")
        try:
            broken = lint_imports(site, tmp_path)
        finally:
            path.write_text(original)
        out = " ".join(broken.stdout.split())
        assert broken.returncode != 0, (module, out[-2000:])
        assert f"{LAYERS} (contracts < data < runs < evaluation < engine < study < cli) BROKEN" in out, out[-2000:]
        assert violation in out, out[-2000:]
