"""Plugin options are validated against the factory's signature before building; a plugin's own exception keeps
its traceback, headed by the plugin; a third party's strategy written against prism.strategy alone trains."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from conftest import FAST
from prism.errors import ConfigError, PluginBug, PluginError
from prism.registry import get_registry, register

# (kind, name, positional args, options, error type, fragments the one-line message must contain)
MODS = ("flair", "t1")
TEST_CASES = [
    ("strategy", "meta_drop", (), {"alpha": 2}, PluginError,
     ["strategy.options.alpha", "meta-strategy 'meta_drop'", "prism-seg", "less than or equal to 1"]),
    ("strategy", "meta_drop", (), {"alpah": 0.5}, PluginError,
     ["strategy.options.alpah", "unknown option", "did you mean 'alpha'"]),
    ("strategy", "meta_drop", (), {"meta_lr": -1.0}, PluginError, ["strategy.options.meta_lr", "greater than 0"]),
    ("strategy", "maml", (), {"inner_steps": "x"}, PluginError, ["strategy.options.inner_steps", "valid integer"]),
    ("strategy", "maml", (), {"inner_steps": 0}, PluginError, ["strategy.options.inner_steps", "greater than"]),
    ("strategy", "maml", (), {"tasks": "sites"}, PluginError, ["strategy.options.tasks", "'combination', 'site'"]),
    ("strategy", "maml", (), {"backend": "jax"}, PluginError, ["strategy.options.backend", "'torch'"]),
    ("strategy", "reptile", (), {"meta_step": 0.2, "meta_step_final": 0.5}, ConfigError,
     ["meta-strategy 'reptile' (prism-seg", "meta_step_final"]),
    ("backbone", "multi_unet", (MODS, 2), {"colour": "red"}, PluginError,
     ["backbone.options.colour", "unknown option of backbone 'multi_unet'", "width"]),
    ("backbone", "multi_unet", (MODS, 2), {"width": 0}, PluginError,
     ["backbone.options.width", "backbone 'multi_unet' (prism-seg", "greater than or equal to 1"]),
    ("backbone", "mmformer", (MODS, 2), {"width": 1, "dim": 30, "heads": 8}, ConfigError,
     ["backbone 'mmformer' (prism-seg", "model.options.dim: the token width 30 must be a multiple of heads=8"]),
    ("masking", "fixed", (MODS,), {"combination": -1}, PluginError,
     ["masking.options.combination: masking policy 'fixed'", "greater than or equal to 0 (got -1)"]),
    ("backbone", "rfnet", (MODS, 2), {"width": "wide"}, PluginError, ["backbone.options.width", "valid integer"]),
]


@pytest.mark.parametrize("kind, name, args, options, error, fragments", TEST_CASES)
def test_bad_options_are_one_line_errors_naming_plugin_and_option(kind, name, args, options, error, fragments):
    with pytest.raises(error) as exc:
        get_registry().build(kind, name, args, options)
    msg = str(exc.value)
    assert "\n" not in msg
    for fragment in fragments:
        assert fragment in msg, (fragment, msg)


def test_options_are_coerced_and_defaults_left_to_the_factory():
    strategy = get_registry().create("strategy", "maml", inner_lr=1, tasks_per_step="3")
    assert strategy.inner_lr == 1.0 and isinstance(strategy.inner_lr, float) and strategy.tasks_per_step == 3
    assert strategy.inner_steps == 1  # the factory's own default


def test_config_field_names_the_options_field():
    with pytest.raises(PluginError, match=r"^losses\.0\.options\.wieght: unknown option"):
        get_registry().build("loss", "fuse", (MODS, 2), {"wieght": 1}, field="losses.0.name")


def test_exception_inside_a_plugin_is_a_plugin_bug_with_its_traceback():
    class Buggy:
        """Divides by zero when built."""

        def __init__(self, *, rate: float = 1.0) -> None:
            self.rate = rate / 0

    register("strategy", "buggy_strategy", Buggy)
    with pytest.raises(PluginBug) as exc:
        get_registry().create("strategy", "buggy_strategy", rate=2.0)
    assert "meta-strategy 'buggy_strategy' (plugin 'in-process')" in str(exc.value)
    assert isinstance(exc.value.__cause__, ZeroDivisionError)  # the plugin's own traceback is kept
    # and a TypeError raised inside a plugin is no longer disguised as an options problem
    def typo(*, x: int = 1):
        return len(x)  # TypeError: a bug

    register("strategy", "typo_strategy", typo)
    with pytest.raises(PluginBug):
        get_registry().create("strategy", "typo_strategy")


THIRD_PARTY_STRATEGY = '''
"""A third party's strategy: imports prism.strategy (and the registry's hookimpl), never prism.engine."""
import torch
from prism.registry import hookimpl
from prism.strategy import StepContext, Strategy


class HalfStep(Strategy):
    """SGD-like: the optimizer step on half the loss, logging the learning rate."""

    def __init__(self, *, factor: float = 0.5):
        self.factor = factor
        self.steps_seen = []

    def setup(self, ctx: StepContext) -> None:
        assert isinstance(ctx, StepContext)

    def step(self, ctx: StepContext) -> dict[str, torch.Tensor]:
        batch = ctx.next_batch("train")
        ctx.zero_grad()
        loss, parts = ctx.compute_loss(batch)
        ctx.backward(loss * self.factor)
        ctx.optimizer_step()
        self.steps_seen.append(ctx.step)
        return {"loss": loss.detach(), "lr": torch.tensor(ctx.learning_rate())}

    def state_dict(self):
        return {"steps_seen": list(self.steps_seen)}

    def load_state_dict(self, state):
        self.steps_seen = list(state["steps_seen"])


class Broken(Strategy):
    """Raises inside its step."""

    def step(self, ctx):
        raise RuntimeError("boom in the third party's step")


@hookimpl
def register_strategies(register):
    register("half_step", HalfStep)
    register("broken_step", Broken)
'''


def _distribution(root: Path) -> None:
    (root / "prism_half_step.py").write_text(textwrap.dedent(THIRD_PARTY_STRATEGY))
    info = root / "prism_half_step-1.2.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: prism-half-step\nVersion: 1.2.0\n")
    (info / "entry_points.txt").write_text("[prism]\nhalf = prism_half_step\n")


def _train(tmp_path: Path, cache: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    cmd = [sys.executable, "-m", "prism.cli.train", "--data", str(cache), "-o", str(tmp_path / "run"), "--no-eval",
           *FAST, *extra]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.slow
def test_third_party_strategy_trains_with_prism_train(tmp_path, tiny_cache):
    (tmp_path / "site").mkdir()
    _distribution(tmp_path / "site")
    done = _train(tmp_path, tiny_cache, "strategy.name=half_step", "strategy.options={factor: 0.25}",
                  "train.steps=2")
    assert done.returncode == 0, done.stderr[-2000:]
    state = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert state["strategy"] == {"steps_seen": [0, 1]}
    bad = _train(tmp_path, tiny_cache, "strategy.name=half_step", "strategy.options={factr: 0.25}")
    assert bad.returncode == 2
    line = bad.stderr.strip().splitlines()
    assert len(line) == 1 and "strategy.options.factr" in line[0] and "prism-half-step 1.2.0" in line[0]


@pytest.mark.slow
def test_bug_in_a_third_party_step_keeps_its_traceback_headed_by_the_plugin(tmp_path, tiny_cache):
    (tmp_path / "site").mkdir()
    _distribution(tmp_path / "site")
    done = _train(tmp_path, tiny_cache, "strategy.name=broken_step", "train.steps=1")
    assert done.returncode == 1
    first = done.stderr.strip().splitlines()[0]
    assert "meta-strategy 'broken_step' (prism-half-step 1.2.0)" in first and "running step 1" in first
    assert "Traceback" in done.stderr and "boom in the third party's step" in done.stderr


@pytest.mark.slow
def test_a_failing_run_releases_its_folder_and_cache(tiny_cache, tmp_path, capsys):
    """close() runs in a finally: after a plugin's exception the run folder's lock is free again."""
    from prism.cli.train import main as train_main
    from prism.engine.run_lock import RunLock
    from prism.strategy import Strategy

    class Exploding(Strategy):
        """Raises in its first step."""

        def step(self, ctx):
            raise RuntimeError("boom")

    register("strategy", "exploding", Exploding)
    run = tmp_path / "run"
    assert train_main(["--data", str(tiny_cache), "-o", str(run), *FAST, "strategy.name=exploding"]) == 1
    assert "meta-strategy 'exploding'" in capsys.readouterr().err
    lock = RunLock(run).acquire()  # would raise if the failed run still held the folder
    lock.release()


# ---- every option of the built-in backbones, masking policies and strategies is documented and limited --------------

#: the kinds whose built-in factories are covered here (loss terms: tests/test_losses_*.py)
KINDS_CHECKED = ("backbone", "loss", "masking", "strategy")
BUILTIN = [(kind, e.name) for kind in KINDS_CHECKED for e in get_registry().entries(kind)
           if e.distribution == "prism-seg"]


def _numeric(annotation) -> bool:
    import typing

    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return _numeric(args[0])
    if args and origin is not typing.Literal:
        return any(_numeric(a) for a in args if a is not type(None))
    return annotation in (int, float)


@pytest.mark.parametrize("kind, name", BUILTIN, ids=[f"{k}-{n}" for k, n in BUILTIN])
def test_builtin_options_have_a_type_a_description_and_limits(kind, name):
    import inspect

    entry = get_registry().get(kind, name)
    params = inspect.signature(entry.factory).parameters.values()
    assert not any(p.kind is p.VAR_KEYWORD for p in params), "options through **kwargs escape validation"
    for option in entry.options():
        assert option.annotated, f"{option.name}: no type"
        assert option.description, f"{option.name}: no description"
        if _numeric(option.annotation):
            assert option.limits, f"{option.name}: a number without limits"


def test_builtin_options_are_in_the_generated_reference():
    import importlib.util

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("gen_reference", root / "docs" / "_gen" / "gen_reference.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    page = gen.plugins_page()
    for kind, name in BUILTIN:
        section = page.split(f"{{ #{kind}-{name} }}", 1)[1].split("\n### ", 1)[0]
        for option in get_registry().get(kind, name).options():
            row = next((line for line in section.splitlines() if line.startswith(f"| `{option.name}` |")), None)
            assert row is not None, (name, option.name)
            assert option.description.split()[0] in row
            assert option.limits.replace(">", "&gt;").replace("<", "&lt;") in row


def test_option_names_like_the_registrys_own_arguments_are_plain_options():
    class Named:
        """Takes options named like prism's own parameters."""

        def __init__(self, modalities, *, kind: str = "k", name: str = "n", field_name: str = "f",
                     field: str = "x", options: int = 0):
            self.values = (kind, name, field_name, field, options)

    register("masking", "named_options", Named)
    from prism.registry import create_masking_policy

    built = create_masking_policy("named_options", MODS, kind="a", name="b", field_name="c", field="d", options=1)
    assert built.values == ("a", "b", "c", "d", 1)
    built = get_registry().create("masking", "named_options", MODS, kind="a", name="b")
    assert built.values[:2] == ("a", "b")
    with pytest.raises(PluginError, match=r"^masking\.train\.options\.options: masking policy 'named_options'.*valid "
                                          r"integer"):
        get_registry().build("masking", "named_options", (MODS,), {"options": "many"}, field="masking.train.name")
