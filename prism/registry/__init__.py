"""The plugin registry: ``list_plugins``, ``create_backbone`` & co., and in-process ``register``.

Building through the registry checks a plugin's options against its factory's signature first (any option name
works), and remembers which plugin built each object, so that an exception raised inside it, or a value of it
that breaks a contract, is reported under that plugin's name (``blame``, ``origin``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from .core import (
    CONTRACT_ARGUMENTS,
    KINDS,
    PluginEntry,
    PluginFailure,
    Registry,
    blame,
    describe,
    get_registry,
    origin,
    reset_registry,
)
from .hookspecs import hookimpl
from .options import OptionSpec

F = TypeVar("F", bound=Callable[..., Any])

__all__ = [
    "CONTRACT_ARGUMENTS", "KINDS", "OptionSpec", "PluginEntry", "PluginFailure", "Registry", "blame", "describe",
    "get_registry", "origin", "reset_registry", "hookimpl",
    "list_plugins", "register", "create_backbone", "create_loss", "create_masking_policy", "create_strategy",
    "create_logger", "register_backbone", "register_loss", "register_masking_policy", "register_strategy",
    "register_logger",
]


def list_plugins(kind: str) -> list[str]:
    """Names registered for ``kind`` (backbone, loss, masking, strategy, logger), sorted."""
    return get_registry().names(kind)


def register(kind: str, name: str, factory: Callable[..., Any], *, override: bool = False) -> PluginEntry:
    """Register ``factory`` under ``name`` in this process."""
    return get_registry().register(kind, name, factory, override=override)


def _decorator(kind: str) -> Callable[..., Callable[[F], F]]:
    def decorator(name: str, *, override: bool = False) -> Callable[[F], F]:
        def wrap(factory: F) -> F:
            register(kind, name, factory, override=override)
            return factory

        return wrap

    decorator.__doc__ = f"Decorator registering a {KINDS[kind][1]} in this process: ``@register_...(name)``."
    return decorator


register_backbone = _decorator("backbone")
register_loss = _decorator("loss")
register_masking_policy = _decorator("masking")
register_strategy = _decorator("strategy")
register_logger = _decorator("logger")


def create_backbone(name: str, /, modalities: tuple[str, ...], num_classes: int, **options: Any) -> Any:
    """Build a registered backbone; ``options`` are checked against its factory first (any name but the two above)."""
    return get_registry().build("backbone", name, (tuple(modalities), num_classes), options)


def create_loss(name: str, /, modalities: tuple[str, ...], num_classes: int, **options: Any) -> Any:
    """Build a registered loss term; ``options`` are checked against its factory first."""
    return get_registry().build("loss", name, (tuple(modalities), num_classes), options)


def create_masking_policy(name: str, /, modalities: tuple[str, ...], **options: Any) -> Any:
    """Build a registered masking policy; ``options`` are checked against its factory first."""
    return get_registry().build("masking", name, (tuple(modalities),), options)


def create_strategy(name: str, /, **options: Any) -> Any:
    """Build a registered meta-strategy; ``options`` are checked against its factory first."""
    return get_registry().build("strategy", name, (), options)


def create_logger(name: str, /, **options: Any) -> Any:
    """Build a registered logger (experiment tracker); ``options`` are checked against its factory first."""
    return get_registry().build("logger", name, (), options)
