"""The conformance kit's bookkeeping: named checks run one after the other, every failure kept, one report."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ..errors import PluginBug, PrismError
from ..registry import KINDS, describe, get_registry

T = TypeVar("T")


class CheckFailed(Exception):
    """A conformance check found the plugin breaking its contract (the message says how)."""


class SkipCheck(Exception):
    """A check that cannot run here (no second device, a part the plugin does not declare)."""


def expect(condition: object, message: str) -> None:
    """Fail the current check with ``message`` unless ``condition`` holds (works under ``python -O``)."""
    if not condition:
        raise CheckFailed(message)


@dataclass
class ConformanceReport:
    """What a ``check_*`` function found.

    Attributes:
        subject: the plugin, as messages name it (``backbone 'tiny' (prism-tiny 0.1.0)``).
        passed: the checks it passed, in the order they ran.
        failed: check name -> what went wrong (one line).
        skipped: check name -> why it did not run.
    """

    subject: str
    passed: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failed

    def summary(self) -> str:
        """``subject: N passed, F failed, S skipped`` and one line per failed or skipped check."""
        lines = [f"{self.subject}: {len(self.passed)} passed, {len(self.failed)} failed, {len(self.skipped)} skipped"]
        lines += [f"  FAILED {name}: {why}" for name, why in self.failed.items()]
        lines += [f"  skipped {name}: {why}" for name, why in self.skipped.items()]
        return "\n".join(lines)


class ConformanceError(AssertionError):
    """Raised by a ``check_*`` function when any check failed: every failed check, by name, in one message.

    Attributes:
        report: the full :class:`ConformanceReport`.
    """

    def __init__(self, report: ConformanceReport) -> None:
        self.report = report
        total = len(report.passed) + len(report.failed)
        lines = [f"{report.subject} failed {len(report.failed)} of {total} conformance checks:"]
        lines += [f"- {name}: {why}" for name, why in report.failed.items()]
        super().__init__("\n".join(lines))


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, CheckFailed | PluginBug | PrismError):
        text = str(exc)
    else:
        text = f"{type(exc).__name__}: {exc}"
    text = " ".join(text.split())
    return text if len(text) <= 600 else text[:597] + "..."


class Checks:
    """Runs named checks; a failing one is recorded and the next runs.

    Args:
        subject: the plugin in words.
        names: every check this suite has (``skip`` must name some of them).
        skip: checks the caller leaves out.
    """

    def __init__(self, subject: str, names: Iterable[str], skip: Iterable[str] = ()) -> None:
        self.names = tuple(names)
        self.skip = frozenset(skip)
        unknown = sorted(self.skip - set(self.names))
        if unknown:
            raise ValueError(f"skip: unknown check(s) {unknown}; the checks are {', '.join(self.names)}")
        self.report = ConformanceReport(subject)

    def run(self, name: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
        """Run check ``name``: ``fn(*args, **kwargs)``; its result, or None when it failed or was skipped."""
        assert name in self.names, name
        if name in self.skip:
            self.report.skipped[name] = "skipped by the caller"
            return None
        try:
            result = fn(*args, **kwargs)
        except SkipCheck as why:
            self.report.skipped[name] = str(why)
            return None
        except Exception as exc:  # a plugin may raise anything: record it and go on
            self.report.failed[name] = _one_line(exc)
            return None
        self.report.passed.append(name)
        return result

    def not_run(self, why: str) -> None:
        """Record every check that has neither run nor been skipped as failed for ``why`` (e.g. it did not build)."""
        done = set(self.report.passed) | set(self.report.failed) | set(self.report.skipped)
        for name in self.names:
            if name not in done:
                self.report.failed[name] = f"not run: {why}"

    def finish(self, raise_on_failure: bool) -> ConformanceReport:
        missing = [n for n in self.names if n not in self.report.passed and n not in self.report.failed
                   and n not in self.report.skipped]
        assert not missing, missing  # every check ran, failed or was skipped
        if raise_on_failure and self.report.failed:
            raise ConformanceError(self.report)
        return self.report


@contextlib.contextmanager
def registered(kind: str, plugin: str | Callable[..., Any]) -> Iterator[tuple[str, str]]:
    """``(name, subject)`` of ``plugin``: a registered name as it is, or a factory registered in this process for
    the duration of the check, under its own name (``TinyNet``, suffixed if taken)."""
    registry = get_registry()
    if isinstance(plugin, str):
        yield plugin, describe(registry.get(kind, plugin))
        return
    if not callable(plugin):
        raise TypeError(f"expected a registered {KINDS[kind][1]} name or its factory, got {plugin!r}")
    base = "".join(c if c.isalnum() or c == "_" else "_" for c in getattr(plugin, "__name__", "plugin"))
    base = base if base.isidentifier() else f"plugin_{base}"
    taken = set(registry.names(kind))
    name = next(n for n in (base, *(f"{base}_{i}" for i in range(2, 1000))) if n not in taken)
    entry = registry.register(kind, name, plugin)
    try:
        yield name, describe(entry)
    finally:
        registry.unregister(kind, name)
