"""The plugin registry, exercised through real entry points of separate distributions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import fast_config
from prism.engine.trainer import Trainer
from prism.errors import PluginError
from prism.registry import (
    create_backbone,
    get_registry,
    list_plugins,
    register,
    register_masking_policy,
    reset_registry,
)

GOOD = '''
import torch
from torch import nn
from prism.backbone import Backbone
from prism.outputs import SegOutput
from prism.registry import hookimpl


class TinyNet(Backbone):
    """A third party's tiny backbone."""

    provides = frozenset({"logits"})

    def __init__(self, modalities, num_classes, channels=4):
        super().__init__(modalities, num_classes)
        self.conv = nn.Conv3d(len(modalities), channels, 3, padding=1)
        self.head = nn.Conv3d(channels, num_classes, 1)

    def forward(self, image, mask):
        x = image * mask[:, :, None, None, None].to(image.dtype)
        return SegOutput(logits=self.head(torch.relu(self.conv(x))))


@hookimpl
def register_backbones(register):
    register("tiny_thirdparty", TinyNet)
'''


def make_distribution(root: Path, dist: str, module: str, source: str, entry: str | None = None) -> None:
    """A minimal installed distribution: a module plus dist-info with an entry point in the prism group."""
    (root / f"{module}.py").write_text(textwrap.dedent(source))
    info = root / f"{dist.replace('-', '_')}-0.3.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.3.1\n")
    (info / "entry_points.txt").write_text(f"[prism]\n{entry or module} = {module}\n")


@pytest.fixture
def plugin_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    make_distribution(tmp_path, "prism-tiny-plugin", "prism_tiny_plugin", GOOD, entry="tiny")
    make_distribution(tmp_path, "prism-broken-plugin", "prism_broken_plugin",
                      "raise ImportError('needs a library that is not installed')\n", entry="broken")
    monkeypatch.syspath_prepend(str(tmp_path))
    reset_registry()
    return tmp_path


def test_builtins_are_registered_through_entry_points():
    reg = get_registry()
    assert "multi_unet" in list_plugins("backbone")
    entry = reg.get("backbone", "multi_unet")
    assert entry.distribution == "prism-seg" and entry.version
    assert {"logits", "deep", "uni"} <= entry.provides
    assert reg.get("loss", "fuse").needs == {"logits"}
    assert "standard" in list_plugins("strategy") and "random" in list_plugins("masking")


def test_third_party_backbone_is_found_and_broken_plugin_reported(plugin_path):
    reg = get_registry()
    entry = reg.get("backbone", "tiny_thirdparty")
    assert (entry.distribution, entry.version, entry.plugin) == ("prism-tiny-plugin", "0.3.1", "tiny")
    assert entry.summary == "A third party's tiny backbone."
    failures = reg.failures
    assert len(failures) == 1
    assert failures[0].plugin == "broken" and failures[0].distribution == "prism-broken-plugin"
    assert "needs a library that is not installed" in failures[0].error
    assert "multi_unet" in reg.names("backbone")  # the others keep working


@pytest.mark.slow
def test_third_party_backbone_trains_one_step(plugin_path, tiny_cache, tmp_path):
    config = fast_config("model.name=tiny_thirdparty", "model.options={channels: 3}", "train.steps=1",
                         cache=tiny_cache)
    trainer = Trainer(config, tmp_path / "run", cache_path=tiny_cache)
    before = [p.detach().clone() for p in trainer.ctx.model.parameters()]
    trainer.fit()
    assert type(trainer.ctx.model).__name__ == "TinyNet"
    assert any(not (a == b.detach()).all() for a, b in zip(before, trainer.ctx.model.parameters(), strict=True))
    info = json.loads((tmp_path / "run" / "run_info.json").read_text())
    assert {"kind": "backbone", "name": "tiny_thirdparty", "plugin": "tiny", "distribution": "prism-tiny-plugin",
            "version": "0.3.1"} in info["plugins"]


@pytest.mark.slow
def test_prism_plugins_cli_lists_third_party_and_failure(plugin_path):
    env = {**os.environ, "PYTHONPATH": str(plugin_path), "COLUMNS": "200"}
    out = subprocess.run([sys.executable, "-m", "prism.cli.plugins"], capture_output=True, text=True, env=env,
                         check=True).stdout
    assert "tiny_thirdparty" in out and "prism-tiny-plugin" in out and "0.3.1" in out
    assert "multi_unet" in out and "broken" in out and "needs a library that is not installed" in out
    data = json.loads(subprocess.run([sys.executable, "-m", "prism.cli.plugins", "--json"], capture_output=True,
                                     text=True, env=env, check=True).stdout)
    by_name = {b["name"]: b for b in data["backbone"]}
    assert by_name["tiny_thirdparty"]["distribution"] == "prism-tiny-plugin"
    assert by_name["multi_unet"]["distribution"] == "prism-seg"
    assert {e["name"]: e["needs"] for e in data["loss"]}["fuse"] == ["logits"]
    assert [f["plugin"] for f in data["failures"]] == ["broken"]


def test_strict_mode_makes_a_broken_plugin_fatal(plugin_path, monkeypatch):
    monkeypatch.setenv("PRISM_STRICT_PLUGINS", "1")
    with pytest.raises(PluginError, match="broken.*PRISM_STRICT_PLUGINS"):
        get_registry().names("backbone")


def test_autoload_off_keeps_only_builtins(plugin_path, monkeypatch):
    monkeypatch.setenv("PRISM_DISABLE_PLUGIN_AUTOLOAD", "1")
    reg = get_registry()
    assert "multi_unet" in reg.names("backbone") and "tiny_thirdparty" not in reg.names("backbone")
    assert {e.distribution for e in reg.entries("backbone")} == {"prism-seg"} and reg.failures == []


def test_allow_list_limits_third_party_plugins(plugin_path, monkeypatch):
    monkeypatch.setenv("PRISM_PLUGINS", "tiny")
    reg = get_registry()
    assert "tiny_thirdparty" in reg.names("backbone") and reg.failures == []


def test_taken_name_from_a_plugin_is_reported_first_wins(tmp_path, monkeypatch):
    clash = GOOD.replace('"tiny_thirdparty"', '"multi_unet"')
    make_distribution(tmp_path, "prism-clash", "prism_clash", clash)
    monkeypatch.syspath_prepend(str(tmp_path))
    reset_registry()
    reg = get_registry()
    assert reg.get("backbone", "multi_unet").distribution == "prism-seg"
    assert any("already registered" in f.error and f.distribution == "prism-clash" for f in reg.failures)


def test_in_process_registration_and_collisions():
    class Everything:
        """Allows every modality."""

        def __init__(self, modalities):
            self.modalities = modalities

        def __call__(self, availability, generator):
            return availability.clone()

    register_masking_policy("everything")(Everything)
    assert "everything" in list_plugins("masking")
    assert get_registry().get("masking", "everything").plugin == "in-process"
    with pytest.raises(PluginError, match="already registered"):
        register("masking", "everything", Everything)
    register("masking", "everything", Everything, override=True)
    with pytest.raises(PluginError, match="not a valid identifier"):
        register("masking", "has space", Everything)


def test_unknown_name_suggests_close_matches():
    with pytest.raises(PluginError) as err:
        get_registry().get("backbone", "multi_unte", field_name="model.name")
    msg = str(err.value)
    assert msg.startswith("model.name: unknown backbone 'multi_unte'") and "'multi_unet'" in msg
    assert "\n" not in msg


def test_bad_options_are_one_line_plugin_errors():
    with pytest.raises(PluginError, match="backbone.options.colour: unknown option of backbone 'multi_unet'"):
        create_backbone("multi_unet", ("flair", "t1"), 2, colour="red")


def test_loading_happens_once(monkeypatch):
    reg = get_registry()
    reg.names("backbone")
    calls = []
    monkeypatch.setattr(reg, "_load_entry_points", lambda: calls.append(1))
    reg.names("loss")
    reg.get("backbone", "multi_unet")
    assert calls == []
