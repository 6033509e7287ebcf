"""A plugin's options: read from its factory's signature, documented from it, validated against it before building.

The factory's keyword parameters (after the positional contract arguments: modalities, number of classes) are
the plugin's options. Each option's annotation is its type, checked with pydantic, limits included when written
as ``Annotated[float, pydantic.Field(ge=0, le=1)]``; its description is ``Field(description=...)`` or, more
usually, its entry in the ``Args:`` section of the factory's (or class's) docstring. A factory that takes
``**kwargs`` accepts unknown options, unvalidated.

Any option name is allowed (``kind``, ``name``, ``field``...): options travel as a mapping, never as keyword
arguments of prism's own functions.
"""

from __future__ import annotations

import collections.abc
import difflib
import functools
import inspect
import re
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import pydantic

from ..errors import PluginError

#: pydantic's numeric and length limits, as the reference writes them
_LIMITS = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<", "min_length": "length >=", "max_length": "length <="}


@dataclass(frozen=True)
class OptionSpec:
    """One option of a plugin, as its factory declares it.

    Attributes:
        name: the keyword argument.
        annotation: its type as written (``Annotated[...]`` included); ``Any`` when unannotated.
        default: its default (``inspect.Parameter.empty`` when the option is required).
        description: from ``Field(description=...)`` or the docstring's ``Args:`` entry ("" when neither).
        limits: the limits pydantic enforces, e.g. ``>= 0, <= 1`` ("" when none).
    """

    name: str
    annotation: Any
    default: Any
    description: str
    limits: str

    @property
    def required(self) -> bool:
        return self.default is inspect.Parameter.empty

    @property
    def annotated(self) -> bool:
        return self.annotation is not Any

    @property
    def type_text(self) -> str:
        """The type in words, without the limits (``int``, ``'sgd' | 'adam'``, ``list[int] | None``)."""
        return type_text(self.annotation) if self.annotated else "any"


def _signature(factory: Callable[..., Any]) -> inspect.Signature | None:
    try:
        return inspect.signature(factory)
    except (TypeError, ValueError):  # a builtin or C callable: nothing to read
        return None


def option_parameters(factory: Callable[..., Any], n_positional: int) -> tuple[list[inspect.Parameter], bool]:
    """``(options, accepts_any)``: the keyword parameters after the ``n_positional`` contract arguments, and
    whether the factory also takes ``**kwargs`` (or cannot be inspected)."""
    sig = _signature(factory)
    if sig is None:
        return [], True
    params = list(sig.parameters.values())
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)][:n_positional]
    named = [p for p in params if p not in positional
             and p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)]
    return named, accepts_any


def signature_problem(factory: Callable[..., Any], n_positional: int, contract: str) -> str | None:
    """Why ``factory`` cannot be called as ``factory(<contract arguments>, **options)`` (None when it can)."""
    if not callable(factory):
        return f"its factory {factory!r} is not callable"
    sig = _signature(factory)
    if sig is None:
        return None
    try:
        sig.bind_partial(*range(n_positional))
    except TypeError:
        return f"its factory must take {contract} positionally, then options as keywords; it takes {sig}"
    return None


def _hints(factory: Callable[..., Any]) -> dict[str, Any]:
    target = factory.__init__ if inspect.isclass(factory) else factory
    try:
        return typing.get_type_hints(target, include_extras=True)
    except Exception:  # annotations naming TYPE_CHECKING-only types: validate names, not types
        return {}


def _field_infos(annotation: Any) -> list[Any]:
    if typing.get_origin(annotation) is not typing.Annotated:
        return []
    return [m for m in typing.get_args(annotation)[1:] if isinstance(m, pydantic.fields.FieldInfo)]


def type_text(annotation: Any) -> str:
    """A readable type: ``Annotated`` metadata left out, ``Literal`` values quoted, unions joined by ``|``."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is type(None):
        return "None"
    if origin is typing.Annotated:
        return type_text(args[0])
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_text(a) for a in args)
    if origin is not None:
        name = getattr(origin, "__name__", str(origin).replace("typing.", ""))
        return f"{name}[{', '.join(type_text(a) for a in args)}]" if args else name
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def limits_text(annotation: Any) -> str:
    """The limits written into an annotation (``Annotated[float, Field(ge=0, lt=1)]`` -> ``>= 0, < 1``): those of
    ``X | None`` are ``X``'s, those of a list's items read ``each >= 1``."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        found = []
        for meta in args[1:]:
            for m in (meta.metadata if isinstance(meta, pydantic.fields.FieldInfo) else [meta]):
                for attr, sym in _LIMITS.items():
                    value = getattr(m, attr, None)
                    if value is not None:
                        found.append(f"{sym} {value:g}" if isinstance(value, float) else f"{sym} {value}")
        inner = limits_text(args[0])
        return ", ".join([*found, inner] if inner else found)
    if origin in (typing.Union, types.UnionType):
        return ", ".join(dict.fromkeys(t for t in (limits_text(a) for a in args) if t))
    if origin in (list, tuple, set, frozenset, collections.abc.Sequence) and args:
        inner = limits_text(args[0])
        return f"each {inner}" if inner else ""
    return ""


_ARGS_HEADER = re.compile(r"^(Args|Arguments|Options|Parameters):\s*$")
_ARG_LINE = re.compile(r"^(\w+)(?:\s*\([^)]*\))?\s*:\s*(.*)$")


def docstring_args(doc: str) -> dict[str, str]:
    """The ``Args:`` section of a Google-style docstring: ``{name: description}`` (continuation lines joined).

    An entry naming several options (``a, b: text``) gives the text to each."""
    out: dict[str, str] = {}
    lines = inspect.cleandoc(doc or "").splitlines()
    i = 0
    while i < len(lines):
        if not _ARGS_HEADER.match(lines[i].strip()):
            i += 1
            continue
        base = len(lines[i]) - len(lines[i].lstrip())
        i += 1
        entry_indent, names, text = None, [], []
        while i < len(lines):
            line = lines[i]
            stripped = line.strip()
            indent = len(line) - len(line.lstrip())
            if stripped and indent <= base:
                break
            if stripped:
                if entry_indent is None:
                    entry_indent = indent
                match = _ARG_LINE.match(stripped.replace(", ", ",")) if indent == entry_indent else None
                if match:
                    for name in names:
                        out.setdefault(name, " ".join(text))
                    head = stripped.split(":", 1)[0]
                    names = [n.split("(")[0].strip() for n in head.split(",") if n.strip()]
                    text = [stripped.split(":", 1)[1].strip()]
                else:
                    text.append(stripped)
            i += 1
        for name in names:
            out.setdefault(name, " ".join(t for t in text if t))
    return out


def _docstrings(factory: Callable[..., Any]) -> list[str]:
    """The docstrings that may document ``factory``'s options: its own, its ``__init__``'s, and those of the
    classes along its MRO up to the one defining that ``__init__`` (an inherited signature keeps its docs)."""
    docs = [inspect.getdoc(factory) or ""]
    if inspect.isclass(factory):
        init = factory.__init__
        docs.append(inspect.getdoc(init) or "")
        for cls in factory.__mro__[1:]:
            if cls is object:
                break
            docs.append(cls.__doc__ or "")
            if cls.__dict__.get("__init__") is init:
                break
    return docs


@functools.lru_cache(maxsize=512)
def _option_specs(factory: Callable[..., Any], n_positional: int) -> tuple[OptionSpec, ...]:
    params, _ = option_parameters(factory, n_positional)
    hints = _hints(factory)
    described: dict[str, str] = {}
    for doc in reversed(_docstrings(factory)):  # the most specific docstring wins
        described.update(docstring_args(doc))
    specs = []
    for p in params:
        annotation = hints.get(p.name, Any if p.annotation is inspect.Parameter.empty else p.annotation)
        if isinstance(annotation, str):  # unresolvable forward reference: name only
            annotation = Any
        field_text = next((f.description for f in _field_infos(annotation) if f.description), None)
        specs.append(OptionSpec(name=p.name, annotation=annotation, default=p.default,
                                description=field_text or described.get(p.name, ""),
                                limits=limits_text(annotation)))
    return tuple(specs)


def option_specs(factory: Callable[..., Any], n_positional: int) -> list[OptionSpec]:
    """Every option of a plugin factory, with its type, default, limits and description.

    Args:
        factory: the registered class or function.
        n_positional: how many leading parameters are the contract's positional arguments (not options).

    Returns:
        One :class:`OptionSpec` per keyword parameter, in signature order.
    """
    try:
        return list(_option_specs(factory, n_positional))
    except TypeError:  # an unhashable factory: not cached
        return list(_option_specs.__wrapped__(factory, n_positional))


@functools.lru_cache(maxsize=1024)
def _adapter(annotation: Any) -> pydantic.TypeAdapter:
    return pydantic.TypeAdapter(annotation, config=pydantic.ConfigDict(arbitrary_types_allowed=True))


def _validate_one(annotation: Any, value: Any) -> Any:
    try:
        adapter = _adapter(annotation)
    except TypeError:  # unhashable annotation (rare): build it each time
        adapter = pydantic.TypeAdapter(annotation, config=pydantic.ConfigDict(arbitrary_types_allowed=True))
    return adapter.validate_python(value)


def _validation_text(key: str, exc: pydantic.ValidationError) -> tuple[str, str]:
    """``(where, message)`` of a validation error (``key.sub``); a union's failed branches are joined with 'or'
    (their type tags left out of the location)."""
    errors = exc.errors()
    locs = [tuple(e["loc"]) for e in errors]
    common = locs[0]
    for loc in locs[1:]:
        n = next((i for i, (a, b) in enumerate(zip(common, loc, strict=False)) if a != b), min(len(common), len(loc)))
        common = common[:n]
    if len(errors) == 1:
        common = locs[0]
    messages = list(dict.fromkeys(e["msg"] for e in errors))
    return ".".join(str(x) for x in (key, *common)), " or ".join(messages)


def validate_options(factory: Callable[..., Any], n_positional: int, options: Mapping[str, Any], *,
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
    params, accepts_any = option_parameters(factory, n_positional)
    if not params and accepts_any:
        return dict(options)
    specs = {s.name: s for s in option_specs(factory, n_positional)}
    for key in options:
        if key not in specs and not accepts_any:
            close = difflib.get_close_matches(str(key), list(specs), n=3, cutoff=0.6)
            hint = f"did you mean {', '.join(repr(c) for c in close)}? " if close else ""
            raise PluginError(f"{field}.{key}: unknown option of {owner}; {hint}"
                              f"options: {', '.join(specs) or 'none'}")
    missing = [n for n, s in specs.items() if s.required and n not in options]
    if missing:
        raise PluginError(f"{field}.{missing[0]}: {owner} needs this option (required: {', '.join(missing)})")
    out: dict[str, Any] = {}
    for key, value in options.items():
        spec = specs.get(key)
        if spec is None:  # **kwargs passthrough
            out[key] = value
            continue
        try:
            out[key] = _validate_one(spec.annotation, value)
        except pydantic.ValidationError as exc:
            where, message = _validation_text(key, exc)
            raise PluginError(f"{field}.{where}: {owner}: {message} (got {value!r})") from None
        except pydantic.PydanticUserError:  # an annotation pydantic cannot check: passed as given
            out[key] = value
    return out
