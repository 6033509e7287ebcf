"""Errors for user mistakes: each carries a one-line message; the CLI prints it and exits with code 2."""

from __future__ import annotations


class PrismError(Exception):
    """A mistake in the user's input (config, data, plugin name): reported in one line, no traceback."""

    exit_code = 2


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
    """An exception raised inside a plugin after its options were validated: a bug, not a user mistake.

    The CLI prints ``str(self)`` (which names the plugin, its distribution and what it was doing) and then the
    plugin's own traceback (``__cause__``), and exits with code 1.
    """
