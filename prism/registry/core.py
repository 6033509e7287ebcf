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
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import pluggy

from ..errors import PluginBug, PluginError, PrismError
from ..outputs import validate_parts
from . import hookspecs
from .options import validate_options

ENTRY_POINT_GROUP = "prism"
BUILTIN_DISTRIBUTION = "prism-seg"

#: kind -> (hook name, human name)
KINDS: dict[str, tuple[str, str]] = {
    "backbone": ("register_backbones", "backbone"),
    "loss": ("register_losses", "loss"),
    "masking": ("register_masking_policies", "masking policy"),
    "strategy": ("register_strategies", "meta-strategy"),
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

    def create(self, kind: str, name: str, *args: Any, field_name: str | None = None, **options: Any) -> Any:
        """Build the plugin ``name`` with ``options`` (``args`` are the contract's positional arguments).

        Raises:
            PluginError: the name is unknown, or an option is unknown, missing, of the wrong type or out of range
                (checked against the factory's signature before building), in one line naming the plugin, its
                distribution and the option.
            PrismError: raised by the plugin itself for a user mistake, prefixed with the plugin's name.
            PluginBug: any other exception raised while building (a bug in the plugin); its traceback is kept.
        """
        entry = self.get(kind, name, field_name=field_name)
        owner = describe(entry)
        options_field = (field_name.rsplit(".", 1)[0] + ".options") if field_name and "." in field_name else (
            f"{kind}.options")
        options = validate_options(entry.factory, len(args), options, owner=owner, field=options_field)
        with blame(entry, "building it"):
            return entry.factory(*args, **options)


def describe(entry: PluginEntry) -> str:
    """``meta-strategy 'maml' (prism-seg 0.1.0)``: how messages name a plugin."""
    origin = f"{entry.distribution} {entry.version}" if entry.distribution else f"plugin '{entry.plugin}'"
    return f"{KINDS[entry.kind][1]} '{entry.name}' ({origin})"


@contextlib.contextmanager
def blame(entry: PluginEntry, doing: str) -> Iterator[None]:
    """Run plugin code: a user mistake (PrismError) it raises gets the plugin's name in front and stays one line;
    any other exception becomes a PluginBug headed by the plugin, with the original traceback as its cause."""
    try:
        yield
    except PrismError as exc:
        if str(exc).startswith(describe(entry)):
            raise
        raise type(exc)(f"{describe(entry)}: {exc}") from None
    except Exception as exc:
        raise PluginBug(f"{describe(entry)} from plugin '{entry.plugin}' raised {type(exc).__name__} while "
                        f"{doing}") from exc


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
