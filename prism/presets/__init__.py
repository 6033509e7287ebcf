"""Config presets shipped with prism: ``prism-train --preset NAME`` (see ``list_presets``)."""

from __future__ import annotations

from importlib import resources
from typing import Any

import yaml

from ..errors import ConfigError


def list_presets() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files(__name__).iterdir() if p.name.endswith(".yaml"))


def load_preset(name: str) -> dict[str, Any]:
    """The preset's config mapping; an unknown name is a one-line error listing the presets."""
    if name not in list_presets():
        import difflib

        close = difflib.get_close_matches(name, list_presets(), n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise ConfigError(f"--preset: unknown preset '{name}'; {hint}available: {', '.join(list_presets())}")
    return yaml.safe_load(resources.files(__name__).joinpath(f"{name}.yaml").read_text()) or {}
