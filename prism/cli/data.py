"""prism-data: make and inspect prism caches."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import DataError
from .common import run_command, stdout_console


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="prism-data", description="Make and inspect prism HDF5 caches.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    s = sub.add_parser("synth", help="write a synthetic BraTS-like dataset to a cache",
                       description="Generate seeded BraTS-like phantoms (FLAIR, T1ce, T1, T2; labels 0-3) "
                       "straight into a prism cache with train/test splits.")
    s.add_argument("-o", "--output", type=Path, required=True, help="cache file to write (.h5)")
    s.add_argument("--cases", type=int, default=24, help="number of cases (default 24)")
    s.add_argument("--shape", type=int, nargs=3, default=(48, 48, 48), metavar=("D", "H", "W"),
                   help="volume size (default 48 48 48)")
    s.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    s.add_argument("--sites", type=int, default=1, help="number of acquisition sites (default 1)")
    s.add_argument("--test-fraction", type=float, default=0.25, help="share of cases in the test split")
    s.add_argument("--val-fraction", type=float, default=0.0, help="share of cases in the val split")
    i = sub.add_parser("info", help="summarise a cache", description="Print a cache's provenance, modalities, "
                       "labels, splits and case count.")
    i.add_argument("cache", type=Path, help="cache file (.h5)")
    i.add_argument("--json", action="store_true", help="print JSON")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return run_command("prism-data", lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    console = stdout_console()
    if args.command == "synth":
        from ..data_tools.synthetic import SynthSettings, write_synthetic_cache

        if args.cases < 2 or min(args.shape) < 8:
            raise DataError("--cases must be at least 2 and every --shape size at least 8")
        if not (0 < args.test_fraction < 1 and 0 <= args.val_fraction < 1 - args.test_fraction):
            raise DataError("--test-fraction and --val-fraction must be in [0, 1) and sum below 1")
        settings = SynthSettings(cases=args.cases, shape=tuple(args.shape), seed=args.seed, sites=args.sites)
        write_synthetic_cache(str(args.output), settings, test_fraction=args.test_fraction,
                              val_fraction=args.val_fraction)
        console.print(f"wrote {args.cases} synthetic cases to {args.output}")
        return 0
    from ..data.cache_reader import CacheReader

    reader = CacheReader(args.cache)
    summary = {
        "path": str(args.cache), "format_version": reader.format_version, "prism_version": reader.prism_version,
        "modalities": list(reader.modalities), "labels": reader.labels, "cases": len(reader.case_ids),
        "splits": {k: len(v) for k, v in reader.splits.items()}, "preprocessing_hash": reader.preprocessing_hash,
    }
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        for key, value in summary.items():
            console.print(f"{key:>18}: {value}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
