"""Every shipped preset validates and names plugins that exist and fit together."""

from __future__ import annotations

import pytest

from prism.cli import train as train_cli
from prism.config import build_config
from prism.engine.builder import build_parts
from prism.modalities import BRATS_MODALITIES
from prism.presets import list_presets, load_preset


def test_expected_presets_ship():
    assert {"demo", "brats2020_mr2468", "meta_drop", "maml", "reptile"} <= set(list_presets())


@pytest.mark.parametrize("name", list_presets())
def test_preset_builds(name):
    config = build_config(load_preset(name), source=f"preset {name}")
    # checks names, options and provides/needs (the availability of a small training split: from_split)
    split = [(True, True, True, True), (True, False, True, False)]
    parts = build_parts(config, BRATS_MODALITIES, 4, availability=split)
    assert parts.model.modalities == BRATS_MODALITIES


def test_demo_preset_is_the_default():
    assert build_config(load_preset("demo")) == build_config()


def test_unknown_preset_is_one_line(capsys):
    assert train_cli.main(["--preset", "mam"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("prism-train: error: --preset: unknown preset 'mam'; did you mean 'maml'? available: "
                   + ", ".join(list_presets()))
