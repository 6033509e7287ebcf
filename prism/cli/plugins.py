"""prism-plugins: list every registered plugin by kind, where it comes from, and what it provides or needs."""

from __future__ import annotations

import argparse
import json
from typing import Any

from rich.table import Table

from ..outputs import PARTS
from ..registry import KINDS, OptionSpec, get_registry
from .common import run_command, stdout_console

PLURALS = {"backbone": "backbones", "loss": "losses", "masking": "masking policies", "strategy": "meta-strategies",
           "logger": "loggers (experiment trackers)"}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="prism-plugins", description="List the plugins prism found (built-in and third-party), by kind, with "
        "their distribution and version; for backbones the SegOutput parts they "
        "provide (core parts, then extra named parts such as RFNet's 'sep'), for losses the parts they need; "
        "--json also gives every plugin's options (type, default, limits, description). "
        "Plugins that failed to load are reported at the end.",
        epilog="environment: PRISM_STRICT_PLUGINS=1 makes plugin failures fatal; PRISM_DISABLE_PLUGIN_AUTOLOAD=1 "
        "loads only prism's own plugins; PRISM_PLUGINS=a,b loads only these third-party entry points.")
    p.add_argument("--json", action="store_true", help="print JSON")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return run_command("prism-plugins", lambda: _list(args))


def _option(spec: OptionSpec) -> dict[str, Any]:
    """An option as JSON: its type as written, default (None when required), limits and description."""
    default = None if spec.required else spec.default
    try:
        json.dumps(default)
    except TypeError:
        default = repr(default)
    return {"name": spec.name, "type": spec.type_text,
            "required": spec.required, "default": default, "limits": spec.limits, "description": spec.description}


def _list(args: argparse.Namespace) -> int:
    reg = get_registry()
    if args.json:
        data = {kind: [{"name": e.name, "plugin": e.plugin, "distribution": e.distribution, "version": e.version,
                        "provides": sorted(e.provides), "needs": sorted(e.needs), "summary": e.summary,
                        "options": [_option(o) for o in e.options()]}
                       for e in reg.entries(kind)] for kind in KINDS}
        data["failures"] = [{"plugin": f.plugin, "distribution": f.distribution, "error": f.error}
                            for f in reg.failures]
        print(json.dumps(data, indent=2))
        return 0
    console = stdout_console()
    for kind in KINDS:
        table = Table(title=PLURALS[kind], title_justify="left")
        columns = ["name", "distribution", "version"]
        columns += {"backbone": ["provides", "extra parts"], "loss": ["needs"]}.get(kind, [])
        for col in [*columns, "summary"]:
            table.add_column(col)
        for e in reg.entries(kind):
            row = [e.name, e.distribution or e.plugin, e.version or "-"]
            if kind == "backbone":
                row += [", ".join(p for p in PARTS if p in e.provides) or "-",
                        ", ".join(sorted(e.provides - PARTS.keys())) or "-"]
            elif kind == "loss":
                row += [", ".join(sorted(e.needs))]
            table.add_row(*row, e.summary)
        console.print(table)
    for failure in reg.failures:
        console.print(f"[red]failed:[/red] {failure}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
