"""The pluggy hooks a prism plugin implements.

A plugin is a module (or object) named by an entry point in the ``prism`` group. It implements any of these
hooks, each receiving a ``register(name, factory)`` callable::

    from prism.registry import hookimpl

    @hookimpl
    def register_backbones(register):
        register("my_net", MyNet)
"""

from __future__ import annotations

import pluggy

PROJECT = "prism"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def register_backbones(register):
    """Register backbones: ``register(name, factory)``; factory(modalities, num_classes, **options) -> Backbone."""


@hookspec
def register_losses(register):
    """Register loss terms: ``register(name, factory)``; factory(modalities, num_classes, **options) -> LossTerm."""


@hookspec
def register_masking_policies(register):
    """Register masking policies: ``register(name, factory)``; factory(modalities, **options) -> MaskingPolicy."""


@hookspec
def register_strategies(register):
    """Register meta-strategies: ``register(name, factory)``; factory(**options) -> Strategy."""


@hookspec
def register_loggers(register):
    """Register loggers (experiment trackers): ``register(name, factory)``; factory(**options) -> Logger."""
