"""Validate a plugin's options against its factory's signature before the plugin is built.

The factory's keyword parameters (after the positional contract arguments: modalities, number of classes) are
the plugin's options; their annotations are checked with pydantic, including constraints written as
``Annotated[float, pydantic.Field(ge=0, le=1)]``. A factory that takes ``**kwargs`` accepts unknown options.
"""

from __future__ import annotations

import difflib
import inspect
import typing
from collections.abc import Callable
from typing import Any

import pydantic

from ..errors import PluginError


def _parameters(factory: Callable[..., Any]) -> tuple[list[inspect.Parameter], bool]:
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):  # a builtin or C callable: nothing to check
        return [], True
    params = list(sig.parameters.values())
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)
    return params, accepts_any


def _hints(factory: Callable[..., Any]) -> dict[str, Any]:
    target = factory.__init__ if inspect.isclass(factory) else factory
    try:
        return typing.get_type_hints(target, include_extras=True)
    except Exception:  # annotations naming TYPE_CHECKING-only types: validate names, not types
        return {}


def validate_options(factory: Callable[..., Any], n_positional: int, options: dict[str, Any], *,
                     owner: str, field: str) -> dict[str, Any]:
    """Check ``options`` against ``factory``'s keyword parameters; return them validated (coerced).

    Args:
        factory: the registered class or function.
        n_positional: how many leading parameters the caller passes positionally (not options).
        options: the user's options (from the config).
        owner: names the plugin in messages, e.g. ``meta-strategy 'maml' (prism-seg 0.1.0)``.
        field: the config field holding the options, e.g. ``strategy.options``.

    Returns:
        the options with validated values, only the keys given.

    Raises:
        PluginError: one line naming the field, the plugin and the option: an unknown option (with close
            matches), a missing required one, a wrong type or a value out of range.
    """
    params, accepts_any = _parameters(factory)
    if not params and accepts_any:
        return dict(options)
    named = [p for p in params[n_positional:]
             if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)]
    known = {p.name: p for p in named}
    for key in options:
        if key not in known and not accepts_any:
            close = difflib.get_close_matches(key, list(known), n=3, cutoff=0.6)
            hint = f"did you mean {', '.join(repr(c) for c in close)}? " if close else ""
            raise PluginError(f"{field}.{key}: unknown option of {owner}; {hint}"
                              f"options: {', '.join(known) or 'none'}")
    missing = [n for n, p in known.items() if p.default is inspect.Parameter.empty and n not in options]
    if missing:
        raise PluginError(f"{field}.{missing[0]}: {owner} needs this option (required: {', '.join(missing)})")
    hints = _hints(factory)
    fields = {n: (hints.get(n, Any), ...) for n in options if n in known}
    try:
        model = pydantic.create_model(  # type: ignore[call-overload]
            "PluginOptions", __config__=pydantic.ConfigDict(arbitrary_types_allowed=True), **fields)
    except (NameError, TypeError, pydantic.PydanticUserError):  # an option named like a pydantic attribute
        return dict(options)
    try:
        validated = model(**{k: v for k, v in options.items() if k in known})
    except pydantic.ValidationError as exc:
        err = exc.errors()[0]
        # field names and list indices; pydantic's union-member tags ("json-or-python[...]") name no option
        loc = ".".join(str(x) for x in err["loc"] if isinstance(x, int) or str(x).isidentifier())
        raise PluginError(f"{field}.{loc}: {owner}: {err['msg']} (got {err.get('input')!r})") from None
    out = {k: getattr(validated, k) for k in fields}
    out.update({k: v for k, v in options.items() if k not in known})  # **kwargs passthrough
    return out
