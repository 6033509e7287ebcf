"""Built-in meta-strategies."""

from __future__ import annotations

from prism.registry import hookimpl

from .standard import Standard


@hookimpl
def register_strategies(register):
    register("standard", Standard)
