"""Errors for user mistakes: each carries a one-line message; the CLI prints it and exits with code 2."""

from __future__ import annotations

from typing import Any


class PrismError(Exception):
    """A mistake in the user's input (config, data, plugin name): reported in one line, no traceback.

    A plugin reports a user mistake (a bad option value, an option combination it cannot honour, input it
    cannot take) by raising one of these, usually ``ConfigError``, with a one-line message naming the option:
    prism puts the plugin's name in front. Any other exception a plugin raises is a :class:`PluginBug`.
    """

    exit_code = 2
    #: the registry entry of the plugin the message was attributed to (set by ``prism.registry.blame``)
    plugin_entry: Any = None


class ConfigError(PrismError):
    """A config field is wrong; the message names the dotted field."""


class PluginError(PrismError):
    """A plugin is unknown, broken, or incompatible with another."""


class CacheError(PrismError):
    """A prism HDF5 cache is missing, truncated, corrupted or of an incompatible version."""


class DataError(PrismError):
    """Input data (a volume, a CSV, a case list) is invalid; the message names the file or case."""


class CheckpointError(PrismError):
    """A checkpoint is missing, unreadable or does not match the run."""


class PluginBug(Exception):
    """A bug in a plugin, not a user mistake: an exception raised inside it after its options were validated, or a
    value it returned that breaks its contract (``prism.seams``).

    ``str(self)`` names the plugin that broke (kind, name, distribution and version) and what it was doing or
    what was expected and what came; ``__cause__`` is the plugin's own exception, with its frames. The CLI prints
    the line, then that traceback, and exits with code 1. Report it to the plugin's authors (its distribution).
    """

    exit_code = 1
    #: the registry entry of the plugin at fault (None when it could not be told)
    plugin_entry: Any = None
