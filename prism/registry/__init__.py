"""The plugin registry: ``list_plugins``, ``create_backbone`` & co., and in-process ``register``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from .core import KINDS, PluginEntry, PluginFailure, Registry, blame, describe, get_registry, reset_registry
from .hookspecs import hookimpl

F = TypeVar("F", bound=Callable[..., Any])

__all__ = [
    "KINDS", "PluginEntry", "PluginFailure", "Registry", "blame", "describe", "get_registry", "reset_registry",
    "hookimpl",
    "list_plugins", "register", "create_backbone", "create_loss", "create_masking_policy", "create_strategy",
    "register_backbone", "register_loss", "register_masking_policy", "register_strategy",
]


def list_plugins(kind: str) -> list[str]:
    """Names registered for ``kind`` (backbone, loss, masking, strategy), sorted."""
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


def create_backbone(name: str, modalities: tuple[str, ...], num_classes: int, **options: Any) -> Any:
    """Build a registered backbone."""
    return get_registry().create("backbone", name, tuple(modalities), num_classes, **options)


def create_loss(name: str, modalities: tuple[str, ...], num_classes: int, **options: Any) -> Any:
    """Build a registered loss term."""
    return get_registry().create("loss", name, tuple(modalities), num_classes, **options)


def create_masking_policy(name: str, modalities: tuple[str, ...], **options: Any) -> Any:
    """Build a registered masking policy."""
    return get_registry().create("masking", name, tuple(modalities), **options)


def create_strategy(name: str, **options: Any) -> Any:
    """Build a registered meta-strategy."""
    return get_registry().create("strategy", name, **options)
