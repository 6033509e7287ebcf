"""The module the entry point names: prism calls these hooks with a ``register(name, factory)`` function."""

from __future__ import annotations

from prism.registry import hookimpl

from .backbone import TinyNet
from .logger import JsonLines
from .loss import UniDice
from .masking import DropOne
from .strategy import Accumulate


@hookimpl
def register_backbones(register):
    register("tiny", TinyNet)  # factory(modalities, num_classes, **model.options)


@hookimpl
def register_losses(register):
    register("uni_dice", UniDice)  # factory(modalities, num_classes, **options)


@hookimpl
def register_masking_policies(register):
    register("drop_one", DropOne)  # factory(modalities, **options)


@hookimpl
def register_strategies(register):
    register("accumulate", Accumulate)  # factory(**strategy.options)


@hookimpl
def register_loggers(register):
    register("jsonl", JsonLines)  # factory(**options of its train.loggers entry)
