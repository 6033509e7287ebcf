"""Built-in meta-strategies."""

from __future__ import annotations

from prism.registry import hookimpl

from .fast_weights import FastWeights
from .maml import MAML
from .meta_drop import MetaDrop
from .meta_transfer import MetaTransfer
from .reptile import Reptile
from .standard import Standard


@hookimpl
def register_strategies(register):
    register("standard", Standard)
    register("meta_drop", MetaDrop)
    register("maml", MAML)
    register("reptile", Reptile)
    register("meta_transfer", MetaTransfer)
    register("fast_weights", FastWeights)
