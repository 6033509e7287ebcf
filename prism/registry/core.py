"""Plugin registry: entry-point discovery through pluggy, in-process registration, lookup with suggestions.

Environment variables:
    PRISM_STRICT_PLUGINS=1           a plugin that fails to load, or registers a taken name, is fatal.
    PRISM_DISABLE_PLUGIN_AUTOLOAD=1  only prism's own entry points are loaded, no third-party ones.
    PRISM_PLUGINS=a,b                only these third-party entry points (by entry-point or distribution
                                     name) are loaded, besides prism's own.
"""

from __future__ import annotations

import contextlib
import difflib
import os
import threading
import types
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import pluggy
from torch import nn

from ..errors import PluginBug, PluginError, PrismError
from ..outputs import validate_parts
from . import hookspecs
from .options import OptionSpec, option_specs, signature_problem, validate_options

ENTRY_POINT_GROUP = "prism"
BUILTIN_DISTRIBUTION = "prism-seg"

#: kind -> (hook name, human name)
KINDS: dict[str, tuple[str, str]] = {
    "backbone": ("register_backbones", "backbone"),
    "loss": ("register_losses", "loss"),
    "masking": ("register_masking_policies", "masking policy"),
    "strategy": ("register_strategies", "meta-strategy"),
    "logger": ("register_loggers", "logger"),
}

#: kind -> the contract's positional arguments every factory takes before its options
CONTRACT_ARGUMENTS: dict[str, tuple[str, ...]] = {
    "backbone": ("modalities", "num_classes"),
    "loss": ("modalities", "num_classes"),
    "masking": ("modalities",),
    "strategy": (),
    "logger": (),
}


@dataclass(frozen=True)
class PluginEntry:
    """One registered name: what builds it and where it came from."""

    kind: str
    name: str
    factory: Callable[..., Any]
    plugin: str
    distribution: str | None = None
    version: str | None = None
    provides: frozenset[str] = frozenset()
    needs: frozenset[str] = frozenset()
    summary: str = ""

    def options(self) -> list[OptionSpec]:
        """The plugin's options (its factory's keyword parameters): type, default, limits, description."""
        return option_specs(self.factory, len(CONTRACT_ARGUMENTS[self.kind]))


@dataclass(frozen=True)
class PluginFailure:
    """A plugin that could not be loaded or registered something it may not."""

    plugin: str
    distribution: str | None
    error: str

    def __str__(self) -> str:
        dist = f" (distribution {self.distribution})" if self.distribution else ""
        return f"plugin '{self.plugin}'{dist}: {self.error}"


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def _summary(obj: Any) -> str:
    doc = (getattr(obj, "__doc__", None) or "").strip()
    return doc.splitlines()[0] if doc else ""


@dataclass
class Registry:
    """Holds every plugin by kind. Entry points are loaded lazily, once, on first lookup."""

    autoload: bool = True
    _entries: dict[str, dict[str, PluginEntry]] = field(default_factory=lambda: {k: {} for k in KINDS})
    _failures: list[PluginFailure] = field(default_factory=list)
    _loaded: bool = False
    _lock: threading.RLock = field(default_factory=threading.RLock)
    #: id(object) -> (weak reference, the entry that built it): who to blame for an object's behaviour
    _built: dict[int, tuple[weakref.ref, PluginEntry]] = field(default_factory=dict)

    # ---- loading -------------------------------------------------------------------------------------------
    def ensure_loaded(self) -> None:
        with self._lock:
            if self._loaded or not self.autoload:
                return
            self._loaded = True
            self._load_entry_points()

    def _selected_entry_points(self) -> list[metadata.EntryPoint]:
        eps = list(metadata.entry_points(group=ENTRY_POINT_GROUP))
        only_builtin = _flag("PRISM_DISABLE_PLUGIN_AUTOLOAD")
        allow = {s.strip() for s in os.environ.get("PRISM_PLUGINS", "").split(",") if s.strip()}
        chosen, seen = [], set()
        for ep in eps:
            dist = ep.dist.name if ep.dist is not None else None
            key = (dist, ep.name, ep.value)
            if key in seen:  # the same distribution found twice on sys.path
                continue
            seen.add(key)
            builtin = dist == BUILTIN_DISTRIBUTION
            if not builtin and (only_builtin or (allow and ep.name not in allow and dist not in allow)):
                continue
            chosen.append(ep)
        # prism's own first, so that a third party cannot take a built-in name
        return sorted(chosen, key=lambda ep: (ep.dist is None or ep.dist.name != BUILTIN_DISTRIBUTION))

    def _load_entry_points(self) -> None:
        pm = pluggy.PluginManager(hookspecs.PROJECT)
        pm.add_hookspecs(hookspecs)
        for ep in self._selected_entry_points():
            dist = ep.dist.name if ep.dist is not None else None
            version = ep.dist.version if ep.dist is not None else None
            try:
                module = ep.load()
                pm.register(module, name=f"{dist}:{ep.name}")
            except Exception as exc:  # a broken plugin must not take the others down
                self._fail(PluginFailure(ep.name, dist, f"failed to load: {type(exc).__name__}: {exc}"))
                continue
            self._call_hooks(pm, module, ep.name, dist, version)

    def _call_hooks(self, pm: pluggy.PluginManager, module: Any, plugin: str, dist: str | None,
                    version: str | None) -> None:
        for kind, (hook_name, _) in KINDS.items():
            for impl in getattr(pm.hook, hook_name).get_hookimpls():
                if impl.plugin is not module:
                    continue

                def register(name: str, factory: Callable[..., Any], *, _kind: str = kind) -> None:
                    try:
                        self._add(_kind, name, factory, plugin=plugin, distribution=dist, version=version,
                                  override=False)
                    except PluginError as exc:  # a taken name: the first registration wins
                        self._fail(PluginFailure(plugin, dist, str(exc)))

                try:
                    impl.function(register=register)
                except Exception as exc:
                    if isinstance(exc, PluginError) and _flag("PRISM_STRICT_PLUGINS"):
                        raise
                    self._fail(PluginFailure(plugin, dist, f"{hook_name} raised {type(exc).__name__}: {exc}"))

    def _fail(self, failure: PluginFailure) -> None:
        self._failures.append(failure)
        if _flag("PRISM_STRICT_PLUGINS"):
            raise PluginError(f"{failure} (PRISM_STRICT_PLUGINS is set)")

    # ---- registering ---------------------------------------------------------------------------------------
    def _add(self, kind: str, name: str, factory: Callable[..., Any], *, plugin: str, distribution: str | None,
             version: str | None, override: bool) -> PluginEntry:
        if kind not in KINDS:
            raise PluginError(f"unknown plugin kind '{kind}'; kinds: {', '.join(KINDS)}")
        if not isinstance(name, str) or not name.isidentifier():
            raise PluginError(f"{KINDS[kind][1]} name {name!r} from plugin '{plugin}' is not a valid identifier")
        contract = CONTRACT_ARGUMENTS[kind]
        problem = signature_problem(factory, len(contract), f"({', '.join(contract)})" if contract else "nothing")
        if problem:
            raise PluginError(f"{KINDS[kind][1]} '{name}' from plugin '{plugin}': {problem}")
        table = self._entries[kind]
        if name in table and not override:
            old = table[name]
            raise PluginError(
                f"{KINDS[kind][1]} '{name}' from plugin '{plugin}' is already registered by plugin "
                f"'{old.plugin}' ({old.distribution or 'in-process'})"
            )
        entry = PluginEntry(
            kind=kind, name=name, factory=factory, plugin=plugin, distribution=distribution, version=version,
            provides=validate_parts(getattr(factory, "provides", ()), f"{kind} '{name}'"),
            needs=validate_parts(getattr(factory, "needs", ()), f"{kind} '{name}'"),
            summary=_summary(factory),
        )
        table[name] = entry
        return entry

    def register(self, kind: str, name: str, factory: Callable[..., Any], *, override: bool = False) -> PluginEntry:
        """Register a plugin in this process (notebooks, tests). A taken name is an error unless ``override``."""
        self.ensure_loaded()
        with self._lock:
            return self._add(kind, name, factory, plugin="in-process", distribution=None, version=None,
                             override=override)

    def unregister(self, kind: str, name: str) -> None:
        """Forget an in-process registration (the conformance kit's temporary names); entry points stay."""
        with self._lock:
            entry = self._entries[kind].get(name)
            if entry is not None and entry.distribution is None:
                del self._entries[kind][name]

    # ---- lookup --------------------------------------------------------------------------------------------
    def names(self, kind: str) -> list[str]:
        self.ensure_loaded()
        return sorted(self._entries[kind])

    def entries(self, kind: str) -> list[PluginEntry]:
        self.ensure_loaded()
        return [self._entries[kind][n] for n in sorted(self._entries[kind])]

    @property
    def failures(self) -> list[PluginFailure]:
        self.ensure_loaded()
        return list(self._failures)

    def get(self, kind: str, name: str, *, field_name: str | None = None) -> PluginEntry:
        """The entry for ``name``; an unknown name is a one-line PluginError listing close matches."""
        self.ensure_loaded()
        table = self._entries[kind]
        if name in table:
            return table[name]
        close = difflib.get_close_matches(str(name), list(table), n=3, cutoff=0.5)
        where = f"{field_name}: " if field_name else ""
        hint = f"did you mean {', '.join(repr(c) for c in close)}? " if close else ""
        broken = [f.plugin for f in self._failures]
        extra = f"; plugins that failed to load: {', '.join(broken)}" if broken else ""
        raise PluginError(
            f"{where}unknown {KINDS[kind][1]} '{name}'; {hint}available: {', '.join(sorted(table)) or 'none'}{extra}"
        )

    # ---- building ------------------------------------------------------------------------------------------
    def build(self, kind: str, name: str, args: Sequence[Any] = (), options: Mapping[str, Any] | None = None, *,
              field: str | None = None) -> Any:
        """Build the plugin ``name`` from the contract's positional ``args`` and its ``options``.

        Options travel as a mapping, so any option name is allowed (``kind``, ``name``, ``field``...).

        Args:
            kind: ``backbone``, ``loss``, ``masking``, ``strategy`` or ``logger``.
            name: the registered name.
            args: the contract's positional arguments (modalities, number of classes; see ``CONTRACT_ARGUMENTS``).
            options: the plugin's options, checked against its factory's signature before it is built.
            field: the config field naming the plugin (``model.name``, ``losses.0.name``), named in errors; its
                options are ``<section>.options``.

        Returns:
            What the factory returned; the registry remembers which plugin built it (:func:`origin`).

        Raises:
            PluginError: the name is unknown, or an option is unknown, missing, of the wrong type or out of range
                (checked against the factory's signature before building), in one line naming the plugin, its
                distribution and the option.
            PrismError: raised by the plugin itself for a user mistake, prefixed with the plugin's name.
            PluginBug: any other exception raised while building (a bug in the plugin); its traceback is kept.
        """
        entry = self.get(kind, name, field_name=field)
        owner = describe(entry)
        options_field = (field.rsplit(".", 1)[0] + ".options") if field and "." in field else f"{kind}.options"
        checked = validate_options(entry.factory, len(args), dict(options or {}), owner=owner, field=options_field)
        with blame(entry, "building it"):
            built = entry.factory(*args, **checked)
        self.remember(built, entry)
        return built

    def create(self, kind: str, name: str, /, *args: Any, **options: Any) -> Any:
        """``build(kind, name, args, options)`` with the options as keyword arguments (any name allowed)."""
        return self.build(kind, name, args, options)

    # ---- provenance ----------------------------------------------------------------------------------------
    def remember(self, obj: Any, entry: PluginEntry) -> None:
        """Record that ``entry`` built ``obj`` (weakly: forgetting it never keeps it alive)."""
        key = id(obj)
        try:
            ref = weakref.ref(obj, lambda _, key=key: self._built.pop(key, None))
        except TypeError:  # no weak references to it (ints, tuples, __slots__ classes): not traceable
            return
        self._built[key] = (ref, entry)

    def origin(self, obj: Any) -> PluginEntry | None:
        """The plugin that built ``obj`` (or, for a module inside a built backbone, that backbone), else None."""
        if obj is None:
            return None
        found = self._built.get(id(obj))
        if found is not None and found[0]() is obj:
            return found[1]
        if isinstance(obj, nn.Module):
            for ref, entry in list(self._built.values()):
                owner = ref()
                if isinstance(owner, nn.Module) and owner is not obj and any(m is obj for m in owner.modules()):
                    return entry
        return None

    def culprit(self, exc: BaseException) -> PluginEntry | None:
        """The plugin whose code raised ``exc``: the innermost frame of its traceback that runs a method of an
        object a plugin built (a loss term, a masking policy, a backbone or one of its modules, a strategy) or a
        function a plugin returned. None when no plugin's code is on the traceback."""
        found = None
        tb = exc.__traceback__
        while tb is not None:  # outermost first: the last match is the innermost
            entry = self._frame_origin(tb.tb_frame)
            if entry is not None:
                found = entry
            tb = tb.tb_next
        return found

    def _frame_origin(self, frame: types.FrameType) -> PluginEntry | None:
        entry = self.origin(frame.f_locals.get("self"))
        if entry is not None:
            return entry
        for ref, built_by in list(self._built.values()):
            fn = ref()
            if isinstance(fn, types.FunctionType) and fn.__code__ is frame.f_code:
                return built_by
        return None


def describe(entry: PluginEntry) -> str:
    """``meta-strategy 'maml' (prism-seg 0.1.0)``: how messages name a plugin."""
    origin = f"{entry.distribution} {entry.version}" if entry.distribution else f"plugin '{entry.plugin}'"
    return f"{KINDS[entry.kind][1]} '{entry.name}' ({origin})"


def origin(obj: Any) -> PluginEntry | None:
    """The registered plugin that built ``obj`` (see :meth:`Registry.origin`), else None."""
    return get_registry().origin(obj)


def _standard_constructor(cls: type) -> bool:
    """Whether ``cls(message)`` makes an exception whose text is ``message`` (no constructor or ``__str__`` of
    its own below ``PrismError``)."""
    for c in cls.__mro__:
        if c is PrismError:
            return True
        if any(k in vars(c) for k in ("__init__", "__new__", "__str__")):
            return False
    return False


def _prefixed(exc: PrismError, prefix: str) -> PrismError:
    """``exc`` with ``prefix: `` in front of its message. A third party's error class with a constructor of its
    own cannot be rebuilt from a message: its nearest prism class (ConfigError, PluginError...) carries it."""
    message = f"{prefix}: {exc}"
    cls = type(exc)
    if not _standard_constructor(cls):
        cls = next(c for c in cls.__mro__ if c.__module__ == PrismError.__module__)
    new = cls(message)
    new.exit_code = exc.exit_code
    return new


@contextlib.contextmanager
def blame(entry: PluginEntry, doing: str) -> Iterator[None]:
    """Run plugin code on behalf of ``entry``. The plugin whose code raised (``entry``, or a plugin it called: a
    loss term, a backbone, a masking policy; see :meth:`Registry.culprit`) is named:

    - a user mistake (PrismError) gets that plugin's name in front and stays one line;
    - any other exception becomes a PluginBug headed by that plugin, the original exception (with the plugin's
      own frames) as its cause.

    An exception that already names its plugin (an inner ``blame``, a seam check) passes through unchanged.
    """
    try:
        yield
    except PluginBug:
        raise
    except PrismError as exc:
        if getattr(exc, "plugin_entry", None) is not None or str(exc).startswith(describe(entry)):
            raise
        culprit = get_registry().culprit(exc) or entry
        new = _prefixed(exc, describe(culprit))
        new.plugin_entry = culprit
        raise new from None
    except Exception as exc:
        culprit = get_registry().culprit(exc) or entry
        called = f" (called by {describe(entry)})" if culprit is not entry else ""
        bug = PluginBug(f"{describe(culprit)} from plugin '{culprit.plugin}' raised {type(exc).__name__} while "
                        f"{doing}{called}")
        bug.plugin_entry = culprit
        raise bug from exc


_default: Registry | None = None
_default_lock = threading.Lock()


def get_registry() -> Registry:
    """The process-wide registry."""
    global _default
    with _default_lock:
        if _default is None:
            _default = Registry()
        return _default


def reset_registry(autoload: bool = True) -> Registry:
    """Forget every plugin; the next lookup loads the entry points again (for tests and notebooks)."""
    global _default
    with _default_lock:
        _default = Registry(autoload=autoload)
        return _default
