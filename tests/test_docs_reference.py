"""The docs' generated reference (docs/_gen/gen_reference.py): nothing in the code is left out of it."""

from __future__ import annotations

import argparse
import ast
import importlib.util
import re
from pathlib import Path

import pytest
from pydantic import BaseModel, Field

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def gen():
    spec = importlib.util.spec_from_file_location("gen_reference", ROOT / "docs" / "_gen" / "gen_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _Example(BaseModel):
    """An example section."""

    plain: int = 3  # a trailing comment
    # a comment line above
    # that goes on
    above: str = "x"
    bounded: float = Field(0.5, ge=0, lt=1)
    described: int = Field(1, description="from Field")


def test_descriptions_come_from_comments_and_fields(gen):
    undocumented: list[str] = []
    (_, _, rows), = list(gen.config_rows(_Example, "ex", undocumented))
    by_name = {r[0]: r for r in rows}
    assert by_name["ex.plain"][4] == "a trailing comment"
    assert by_name["ex.above"][4] == "a comment line above that goes on"
    assert by_name["ex.described"][4] == "from Field"
    assert by_name["ex.bounded"][3] == ">= 0, < 1" and by_name["ex.bounded"][4] == ""
    assert undocumented == ["ex.bounded"]
    assert by_name["ex.plain"][1:3] == ("int", "3")


def _leaf_fields(model: type[BaseModel], prefix: str = "") -> set[str]:
    """Dotted names of every field that is not itself a section (independent walk of the models)."""
    out = set()
    for name, info in model.model_fields.items():
        path = f"{prefix}.{name}" if prefix else name
        ann = info.annotation
        inner = [a for a in (ann, *getattr(ann, "__args__", ())) if isinstance(a, type) and issubclass(a, BaseModel)]
        if inner:
            suffix = "[i]" if getattr(ann, "__origin__", None) is list else (
                ".<key>" if getattr(ann, "__origin__", None) is dict else "")
            out |= _leaf_fields(inner[0], path + suffix)
        else:
            out.add(path)
    return out


def test_every_config_field_is_in_the_reference_with_a_description(gen):
    from prism.config import Config

    page, undocumented = gen.config_page()
    documented = set(re.findall(r"^\| `([^`]+)` \|", page, flags=re.M))
    assert _leaf_fields(Config) <= documented
    assert undocumented == []  # prism/config.py: every field carries a comment or a description


def test_every_console_command_and_subcommand_has_its_help(gen):
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    page = gen.cli_page()
    for name, target in scripts.items():
        assert f"\n## {name}\n" in page
        module = importlib.import_module(target.split(":")[0])
        for fn in gen.parser_functions(module):
            for action in fn()._actions:
                if isinstance(action, argparse._SubParsersAction):
                    for sub in action.choices:
                        assert f"### {name} {sub}\n" in page


def test_every_registered_plugin_is_listed(gen):
    from prism.registry import KINDS, get_registry

    page = gen.plugins_page()
    for kind in KINDS:
        for name in get_registry().names(kind):
            assert f"{{ #{kind}-{name} }}" in page


def test_error_messages_render_fstrings_and_every_raise_is_found(gen):
    node = ast.parse("f'{path}: no case {case!r} in {len(xs)} cases'", mode="eval").body
    assert gen.render_message(node) == "{path}: no case '{case}' in {len(xs)} cases"
    trees = list(gen.source_trees())
    classes = gen.error_classes(trees)
    assert {"PrismError", "ConfigError", "DataError", "PluginError", "CacheError"} <= set(classes)
    found = gen.raised_errors(set(classes), trees)
    count = sum(1 for path in ROOT.joinpath("prism").rglob("*.py")
                for line in path.read_text().splitlines() if re.match(r"\s*raise ConfigError\(", line))
    assert sum(1 for r in found if r[0] == "ConfigError" and r[1].startswith("prism/")) == count
