"""prism-data: make and inspect prism caches."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from ..atomic import storage_error
from ..data.cache_format import DEFAULT_CHUNK
from ..errors import DataError
from .common import OneLineParser, run_command, stdout_console

MAX_SEED = 2**32 - 1


def _int_in(low: int, high: int):
    """An argparse type: an integer in ``[low, high]`` (a one-line error naming the flag otherwise)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be an integer in [{low}, {high}], got {value}")
        return value
    parse.__name__ = "int"
    return parse


def _float_in(low: float, high: float, *, low_open: bool = False, high_open: bool = False):
    """An argparse type: a finite number in the interval (NaN and infinities are refused)."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid number: {text!r}") from None
        below = value <= low if low_open else value < low
        above = value >= high if high_open else value > high
        if not math.isfinite(value) or below or above:
            raise argparse.ArgumentTypeError(f"must be a finite number in {'(' if low_open else '['}{low:g}, "
                                             f"{high:g}{')' if high_open else ']'}, got {text}")
        return value
    parse.__name__ = "float"
    return parse


SEED = _int_in(0, MAX_SEED)
FRACTION = _float_in(0, 1, high_open=True)


def parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="prism-data", description="Make and inspect prism HDF5 caches.")
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
    s.add_argument("--hold-out-site", action="append", default=[], metavar="SITE",
                   help="keep this site (e.g. site3) out of train/val/test: its cases form split 'heldout'")
    s.add_argument("--missing-rates", type=float, nargs=4, metavar=("FLAIR", "T1CE", "T1", "T2"),
                   help="chance that a training case lacks each modality, drawn once per case with --seed (an "
                   "all-missing draw is redrawn; other splits keep all four); PASSION's mr2468 is 0.6 0.4 0.2 0.8 "
                   "(caches only)")
    s.add_argument("--extra-classes", action="store_true",
                   help="also label CSF (4) and white-matter hyperintensities (5): classes to hold out in few-shot "
                   "class tasks (caches only)")
    s.add_argument("--nifti", action="store_true",
                   help="write a raw BraTS-layout NIfTI folder at OUTPUT instead of a cache")
    s.add_argument("--layout", choices=("brats2020", "brats2023"), default="brats2020",
                   help="file naming of --nifti folders (default brats2020)")
    pp = sub.add_parser("preprocess", help="raw NIfTI folders -> a prism cache",
                        description="Crop to the brain, z-score each modality over brain voxels, map labels, and "
                        "write a verified cache (built in a temporary file, renamed into place).")
    pp.add_argument("raw", type=Path, help="raw data folder (one sub-folder per case)")
    pp.add_argument("-o", "--output", type=Path, required=True, help="cache file to write (.h5)")
    pp.add_argument("--layout", default="auto",
                    help="brats2020, brats2023, a dataset description file (YAML/JSON), or auto (default)")
    pp.add_argument("--workers", type=_int_in(1, 256), default=1, help="parallel worker processes (default 1)")
    pp.add_argument("--min-size", type=_int_in(1, 4096), default=128,
                    help="minimum crop size per axis, in voxels of the cache (default 128)")
    pp.add_argument("--margin", type=_int_in(0, 4096), default=0, help="voxels kept around the brain box (default 0)")
    pp.add_argument("--chunk", type=_int_in(0, 1024), nargs="+", default=list(DEFAULT_CHUNK), metavar="EDGE",
                    help="chunk edges in voxels: one for all axes or three (D H W), 0 = the whole axis in parts of "
                    "at most 192, each other edge at least 4 (default 16 16 0: rows of the last axis)")
    pp.add_argument("--spacing", type=_float_in(0, 100, low_open=True), nargs=3, metavar=("X", "Y", "Z"),
                    help="resample every case to this voxel size in mm (along the NIfTI voxel axes i, j, k): "
                    "images by cubic spline, labels by nearest neighbour; predictions are resampled back "
                    "(default: keep each case's spacing)")
    pp.add_argument("--seed", type=SEED, default=0, help="seed for splits, drawn availability, samples")
    pp.add_argument("--test-fraction", type=FRACTION, default=0.2, help="random test share (default 0.2)")
    pp.add_argument("--val-fraction", type=FRACTION, default=0.0, help="random val share (default 0)")
    pp.add_argument("--split", action="append", default=[], metavar="NAME=FILE",
                    help="split from a case list file (repeatable); replaces the random split")
    pp.add_argument("--availability-csv", type=Path, help="PASSION split CSV giving each case's modalities")
    pp.add_argument("--unlisted", choices=("error", "full"), default="error",
                    help="training cases absent from --availability-csv: an error (default), or 'full' (they keep "
                    "every modality file they have)")
    pp.add_argument("--missing-rates", default="",
                    help="draw train availability: 'mr2468' (PASSION) or 'flair=0.6,t1=0.2'")
    pp.add_argument("--force", action="store_true", help="rebuild even if the cache is up to date")
    sp = sub.add_parser("split", help="write site hold-out splits, or k-fold cross-validation splits",
                        description="--hold-out-site: cut a cache's cases into train/val/test from every site but "
                        "the held-out ones, whose cases form split 'heldout'. --folds K: cut the 'train' split "
                        "into K disjoint validation folds, writing splits fold<k>_train and fold<k>_val for k = 0 "
                        "to K-1 (train with prism-train data.fold=k). Written into the cache atomically and under "
                        "a lock (other splits kept).")
    sp.add_argument("cache", type=Path, help="cache file (.h5)")
    what = sp.add_mutually_exclusive_group(required=True)
    what.add_argument("--hold-out-site", action="append", metavar="SITE",
                      help="site to keep out of training (repeatable)")
    what.add_argument("--folds", type=_int_in(2, 100), metavar="K",
                      help="number of cross-validation folds of the 'train' split (nnU-Net uses 5)")
    sp.add_argument("--test-fraction", type=FRACTION, default=0.2, help="test share of the other sites' cases")
    sp.add_argument("--val-fraction", type=FRACTION, default=0.0, help="val share of the other sites' cases")
    sp.add_argument("--seed", type=SEED, default=0, help="shuffle seed (default 0)")
    v = sub.add_parser("verify", help="check a cache completely",
                       description="Check format, provenance, every chunk's checksum and each case's attributes.")
    v.add_argument("cache", type=Path, help="cache file (.h5)")
    v.add_argument("--sources", action="store_true", help="also check the source files are unchanged")
    v.add_argument("--source-root", type=Path, help="where the sources are now (default: where they were)")
    i = sub.add_parser("info", help="summarise a cache", description="Print a cache's provenance, modalities, "
                       "labels, splits and case count.")
    i.add_argument("cache", type=Path, help="cache file (.h5)")
    i.add_argument("--json", action="store_true", help="print JSON")
    i.add_argument("--cases", action="store_true", help="also list every case")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return run_command("prism-data", lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    console = stdout_console()
    if args.command == "synth":
        from ..data_tools.synthetic import SynthSettings, write_synthetic_cache
        from ..modalities import BRATS_MODALITIES

        if args.cases < 2 or min(args.shape) < 8:
            raise DataError("--cases must be at least 2 and every --shape size at least 8")
        if args.cases > 100_000 or max(args.shape) > 512:
            raise DataError("--cases must be at most 100000 and every --shape size at most 512")
        if not (0 <= args.seed <= MAX_SEED and 1 <= args.sites <= args.cases):
            raise DataError(f"--seed must be in [0, {MAX_SEED}] and --sites in [1, --cases]")
        if not (0 < args.test_fraction < 1 and 0 <= args.val_fraction < 1 - args.test_fraction):
            raise DataError("--test-fraction and --val-fraction must be in [0, 1) and sum below 1")
        settings = SynthSettings(cases=args.cases, shape=tuple(args.shape), seed=args.seed, sites=args.sites,
                                 extra_classes=args.extra_classes)
        if args.nifti and args.extra_classes:
            raise DataError("--extra-classes: BraTS NIfTI folders have no label values for them; write a cache")
        if args.nifti and args.missing_rates:
            raise DataError("--missing-rates: a NIfTI folder's availability is its files; write a cache, or give "
                            "--missing-rates to prism-data preprocess")
        rates = (",".join(f"{m}={r}" for m, r in zip(BRATS_MODALITIES, args.missing_rates, strict=True))
                 if args.missing_rates else None)
        if args.nifti:
            from ..data_tools.synthetic import write_synthetic_nifti

            try:
                write_synthetic_nifti(args.output, settings, layout=args.layout)
            except OSError as exc:
                raise storage_error(args.output, exc, "cannot write the NIfTI folder") from None
            console.print(f"wrote {args.cases} synthetic NIfTI cases to {args.output}")
            return 0
        write_synthetic_cache(str(args.output), settings, test_fraction=args.test_fraction,
                              val_fraction=args.val_fraction, hold_out_sites=args.hold_out_site,
                              missing_rates=rates)
        console.print(f"wrote {args.cases} synthetic cases to {args.output}")
        return 0
    if args.command == "preprocess":
        return _preprocess(args, console)
    if args.command == "split":
        return _split(args, console)
    if args.command == "verify":
        from ..data.verify import verify_cache

        report = verify_cache(args.cache, check_sources=args.sources, source_root=args.source_root)
        extra = f", {report.sources_checked} source files unchanged" if args.sources else ""
        console.print(f"{args.cache}: OK ({report.cases} cases, {report.chunks_read} chunks checked{extra})")
        return 0
    from ..data.cache_reader import CacheReader

    reader = CacheReader(args.cache)
    infos = [reader.info(c) for c in reader.case_ids]
    avail = [sum(i.availability[m] for i in infos) for m in range(reader.num_modalities)]
    summary = {
        "path": str(args.cache), "format_version": reader.format_version, "prism_version": reader.prism_version,
        "modalities": list(reader.modalities), "labels": reader.labels, "cases": len(reader.case_ids),
        "splits": {k: len(v) for k, v in reader.splits.items()}, "preprocessing_hash": reader.preprocessing_hash,
        "created": reader.created, "source_root": reader.source_root, "source_files": len(reader.sources),
        "available_per_modality": dict(zip(reader.modalities, avail, strict=True)),
        "sites": sorted({i.site for i in infos if i.site}),
        "size_mb": round(args.cache.stat().st_size / 1e6, 2),
    }
    if args.cases:
        summary["case_list"] = [
            {"case": i.case_id, "shape": list(i.shape), "availability": [int(v) for v in i.availability],
             "site": i.site} for i in infos]
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        for key, value in summary.items():
            console.print(f"{key:>18}: {value}")
    return 0


def _split(args: argparse.Namespace, console) -> int:
    from ..data.splits import FOLD_SPLIT, SITE_SPLITS, fold_splits, hold_out_site_splits, update_splits

    if args.folds is not None:
        splits = update_splits(args.cache, lambda reader: fold_splits(reader.split("train"), args.folds,
                                                                        seed=args.seed),
                               replace=lambda name: FOLD_SPLIT.match(name) is not None)
        sizes = [len(splits[f"fold{k}_val"]) for k in range(args.folds)]
        console.print(f"{args.cache}: {args.folds} folds of the train split ({sum(sizes)} cases; validation folds "
                      f"of {min(sizes)}-{max(sizes)}): splits fold0_train/fold0_val ... "
                      f"fold{args.folds - 1}_train/fold{args.folds - 1}_val")
        return 0
    if not (0 < args.test_fraction < 1 and 0 <= args.val_fraction < 1 - args.test_fraction):
        raise DataError("--test-fraction and --val-fraction must be in [0, 1) and sum below 1")

    def make(reader):
        sites = {c: reader.info(c).site for c in reader.case_ids}
        return hold_out_site_splits(sites, args.hold_out_site, seed=args.seed, test_fraction=args.test_fraction,
                                    val_fraction=args.val_fraction)

    splits = update_splits(args.cache, make, replace=lambda name: name in SITE_SPLITS)
    console.print(f"{args.cache}: " + ", ".join(f"{k} {len(v)}" for k, v in splits.items()) + " cases")
    return 0


def _preprocess(args: argparse.Namespace, console) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from ..data_tools.layouts import resolve_layout
    from ..data_tools.preprocess import PreprocessSettings, build_cache

    if len(args.chunk) not in (1, 3) or any(0 < c < 4 for c in args.chunk) or args.chunk == [0]:
        raise DataError(f"--chunk: one edge or three (D H W), each 0 (the whole axis) or at least 4; got "
                        f"{' '.join(map(str, args.chunk))}")
    lists = {}
    for item in args.split:
        name, sep, file = item.partition("=")
        if not sep or not name or not Path(file).is_file():
            raise DataError(f"--split {item}: expected NAME=FILE with an existing file")
        lists[name] = str(Path(file).resolve())
    if args.availability_csv is not None and not args.availability_csv.is_file():
        raise DataError(f"--availability-csv: {args.availability_csv} not found")
    settings = PreprocessSettings(
        min_size=args.min_size, margin=args.margin, seed=args.seed,
        chunk=args.chunk[0] if len(args.chunk) == 1 else tuple(args.chunk),
        spacing=tuple(args.spacing) if args.spacing else None,
        test_fraction=args.test_fraction, val_fraction=args.val_fraction, split_lists=lists,
        availability_csv=str(args.availability_csv or ""), missing_rates=args.missing_rates, unlisted=args.unlisted)
    layout = resolve_layout(args.layout, args.raw)
    with Progress(TextColumn("[bold]preprocess"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  TextColumn("{task.description}"), console=console, transient=True) as bar:
        task = bar.add_task("", total=None)

        def progress(done: int, total: int, case_id: str) -> None:
            bar.update(task, completed=done, total=total, description=case_id)

        status = build_cache(args.raw, args.output, layout, settings, workers=args.workers, force=args.force,
                             progress=progress)
    if status == "up-to-date":
        console.print(f"{args.output} is up to date (same settings and sources); --force rebuilds it")
    else:
        console.print(f"wrote {args.output} ({layout.name} layout)")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
