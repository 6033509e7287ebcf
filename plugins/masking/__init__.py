"""Built-in masking policies."""

from __future__ import annotations

from prism.registry import hookimpl

from .policies import RandomCombination


@hookimpl
def register_masking_policies(register):
    register("random", RandomCombination)
