"""Shared fixtures: a tiny synthetic cache, a clean registry, a fast config."""

from __future__ import annotations

import multiprocessing
import subprocess
from pathlib import Path

import pytest

from prism.config import build_config
from prism.data_tools.synthetic import SynthSettings, write_synthetic_cache
from prism.engine.observers import Observer
from prism.registry import reset_registry

#: public files vendored for the tests (each folder's README names its source and licence)
FIXTURES = Path(__file__).resolve().parent / "fixtures"
PASSION_FIXTURES = FIXTURES / "passion"

FAST = [
    "model.options.width=4", "model.options.depth=3", "data.patch_size=[16,16,16]", "data.batch_size=2",
    "train.steps=6", "train.log_every=2", "train.checkpoint_every=3", "train.threads=1", "train.deterministic=true",
    "optim.lr=0.01",
]


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cache") / "tiny.h5"
    write_synthetic_cache(str(path), SynthSettings(cases=6, shape=(24, 24, 24), seed=3), test_fraction=0.34)
    return path


@pytest.fixture(autouse=True)
def fresh_registry(monkeypatch: pytest.MonkeyPatch):
    for var in ("PRISM_STRICT_PLUGINS", "PRISM_DISABLE_PLUGIN_AUTOLOAD", "PRISM_PLUGINS"):
        monkeypatch.delenv(var, raising=False)
    reset_registry()
    yield
    reset_registry()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that need a Slurm cluster belong to the slow tier too, so ``-m "not slow"`` never selects them."""
    for item in items:
        if item.get_closest_marker("slurm") is not None and item.get_closest_marker("slow") is None:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True)
def quick_tier_guard(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch):
    """Keep the quick tier quick: a test not marked ``slow`` fails if it trains (``Trainer.fit``) or spawns a
    process (``subprocess.Popen``, ``multiprocessing.Process.start``), naming what it did."""
    if request.node.get_closest_marker("slow") is not None:
        yield
        return
    from prism.engine.trainer import Trainer

    seen: list[str] = []

    def guard(what: str, original):
        def wrapper(*args, **kwargs):
            seen.append(what)
            return original(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(Trainer, "fit", guard("trains a model (Trainer.fit)", Trainer.fit))
    monkeypatch.setattr(subprocess.Popen, "__init__", guard("spawns a process (subprocess)", subprocess.Popen.__init__))
    monkeypatch.setattr(
        multiprocessing.process.BaseProcess, "start",
        guard("spawns a process (multiprocessing)", multiprocessing.process.BaseProcess.start),
    )
    yield
    if seen:
        pytest.fail(f"{request.node.nodeid} {seen[0]}: mark it @pytest.mark.slow", pytrace=False)


def fast_config(*overrides: str, cache: Path | None = None):
    extra = [f"data.cache={cache}"] if cache is not None else []
    return build_config(None, [*FAST, *extra, *overrides])


def tree_state(*roots: Path) -> dict[str, tuple[int, int]]:
    """Size and modification time of every path under ``roots``: equal before and after means nothing changed."""
    return {str(p): (p.lstat().st_size, p.lstat().st_mtime_ns) for root in roots for p in sorted(root.rglob("*"))}


class Killed(Exception):
    """Raised by :class:`KillAt`."""


class KillAt(Observer):
    """Dies at the end of step ``step``, before that step's checkpoint is written (as a SIGKILL would)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, trainer, parts):
        if trainer.ctx.step == self.step:
            raise Killed
