"""Built-in masking policies."""

from __future__ import annotations

from prism.registry import hookimpl

from .policies import CaseAvailability, FixedCombination, FullModalities, RandomCombination, UtdDrop


@hookimpl
def register_masking_policies(register):
    register("full", FullModalities)
    register("random", RandomCombination)
    register("utd", CaseAvailability)
    register("utd_drop", UtdDrop)
    register("fixed", FixedCombination)
