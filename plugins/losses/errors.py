"""The error a loss term raises for a bad option: a user mistake (PluginError, one line) that is also a ValueError."""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from prism.errors import PluginError


class LossOptionError(PluginError, ValueError):
    """A loss term's option is unknown, of the wrong length or out of range (one line, no traceback in the CLI)."""


def check_keys(options: Mapping[str, Any], factory: Callable[..., Any] | Iterable[str], where: str) -> None:
    """Refuse option names that ``factory`` does not take (a group of options passed on as a dict).

    Args:
        options: the options passed on; factory: what receives them, or the names it takes; where: names them
            in the message.
    Raises:
        LossOptionError: an unknown name, with close matches and the known ones.
    """
    if callable(factory):
        known = [p.name for p in inspect.signature(factory).parameters.values()
                 if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and p.name != "self"]
    else:
        known = list(factory)
    for key in options:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=3, cutoff=0.6)
            hint = f"did you mean {', '.join(repr(c) for c in close)}? " if close else ""
            raise LossOptionError(f"{where}: unknown option '{key}'; {hint}options: {', '.join(known)}")
