"""Loader throughput with augmentation: patches per second one DataLoader worker makes, ``light`` against the
``nnunet`` transform list, interleaved and repeated.

A worker's work is ``PatchDataset[i]`` (read the patch, augment it) with one torch thread and one decompression
thread, as in a DataLoader worker; this script does exactly that in one process, on BraTS-sized phantoms (4 x
140 x 170 x 140, the brain box of a BraTS case) written to a prism cache, page cache warm. For each repeat the
contenders take turns sample by sample (the order rotating), each drawing the same sample numbers, so a busy
machine slows them alike. A repeat's rate is its samples over their total time (the mean governs throughput:
the nnunet list rotates or scales a third of the samples, and those cost most); each row reports the median over
repeats and, in parentheses, the range of the per-repeat rates. ``workers for N/s`` is how many such workers a
loader needs to deliver N patches per second (``--target``, default 20: one 80^3 patch per step at 20 steps per
second).

``--breakdown`` adds each transform of the nnunet list alone, made to fire (every sample, every modality), in ms
per sample, and its expected share per sample (the chance it fires times its cost).

Usage: python benchmarks/bench_augment.py [--cases 2] [--samples 40] [--repeats 5] [--sizes 128 80]
       [--target 20] [--breakdown] [--smoke]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from prism.config import build_config
from prism.data.cache_reader import CacheReader
from prism.data.patches import PatchDataset
from prism.data.transforms import TRANSFORMS, AugmentPipeline, PatchSample, Spatial
from prism.data_tools.synthetic import SynthSettings, write_synthetic_cache

CONTENDERS = ("light", "nnunet")


def dataset(reader: CacheReader, ids: list[str], size: int, name: str, seed: int) -> PatchDataset:
    """The training dataset ``data.augment: name`` builds (light: flips only, prism's default)."""
    augment = build_config(None, [f"data.augment={name}"]).data.augment
    pipeline = None if augment == "light" else AugmentPipeline([s.model_dump() for s in augment])
    return PatchDataset(reader, ids, (size, size, size), seed=seed, augment=pipeline)


def interleaved(datasets: dict[str, PatchDataset], samples: int, repeats: int) -> dict[str, list[float]]:
    """Per contender, the patches/s of each repeat (contenders alternating sample by sample, order rotating)."""
    names = list(datasets)
    rates: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        spent = dict.fromkeys(names, 0.0)
        for i in range(samples):
            index = r * samples + i
            for k in range(len(names)):
                name = names[(i + k) % len(names)]
                t0 = time.perf_counter()
                datasets[name][index]
                spent[name] += time.perf_counter() - t0
        for name in names:
            rates[name].append(samples / spent[name])
    return rates


def breakdown(reader: CacheReader, case: str, size: int, repeats: int) -> dict[str, dict[str, float]]:
    """Each nnunet transform alone, made to fire: median ms per sample, and that times its chance of firing."""
    from monai.data import get_track_meta, set_track_meta

    tracking = get_track_meta()
    set_track_meta(False)  # as AugmentPipeline.make_patch runs them
    try:
        return _breakdown(reader, case, size, repeats)
    finally:
        set_track_meta(tracking)


def _breakdown(reader: CacheReader, case: str, size: int, repeats: int) -> dict[str, dict[str, float]]:
    steps = [s.model_dump() for s in build_config(None, ["data.augment=nnunet"]).data.augment]
    image, label = reader.read_region(case, (0, 0, 0), (size, size, size))
    out = {}
    for k, step in enumerate(steps):
        options = dict(step["options"])
        chance = options.get("probability", 1.0)
        if step["name"] == "spatial":
            chance = 1 - (1 - options["rotate_probability"]) * (1 - options["scale_probability"])
            options.update(rotate_probability=1.0, scale_probability=1.0)
        elif step["name"] != "mirror":
            chance *= options.get("channel_probability", 1.0)  # expected share of the modalities
            options.update(probability=1.0, **({"channel_probability": 1.0} if "channel_probability" in options
                                                else {}))
        transform = TRANSFORMS[step["name"]](**options)
        times = []
        for r in range(repeats):
            transform.set_random_state(r)
            t0 = time.perf_counter()
            if isinstance(transform, Spatial):
                grid = transform.draw((size,) * 3)
                transform.resample_region(lambda at, n: reader.read_region(case, at, n), grid, (5, 10, 5),
                                          (size,) * 3, reader.info(case).shape, image.shape[0])
            else:
                transform(PatchSample(torch.from_numpy(image.copy()), torch.from_numpy(label.astype(np.int64)),
                                      torch.ones(image.shape[0], dtype=torch.bool)))
            times.append(time.perf_counter() - t0)
        ms = statistics.median(times) * 1e3
        out[f"{k}: {step['name']}"] = {"ms_when_fired": round(ms, 2), "expected_ms": round(ms * chance, 2)}
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=2)
    ap.add_argument("--samples", type=int, default=40, help="samples per contender per repeat (default 40)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--sizes", type=int, nargs="+", default=[128, 80])
    ap.add_argument("--shape", type=int, nargs=3, default=(140, 170, 140))
    ap.add_argument("--target", type=float, default=20.0, help="patches/s the loader must deliver (default 20)")
    ap.add_argument("--breakdown", action="store_true", help="also each nnunet transform alone")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, to check that the script runs")
    args = ap.parse_args(argv)
    if args.smoke:
        args.cases, args.samples, args.repeats, args.sizes, args.shape = 2, 3, 2, [16], (24, 24, 24)
    torch.set_num_threads(1)  # a DataLoader worker's setting
    console = Console(width=160, highlight=False)
    with tempfile.TemporaryDirectory(prefix="prism-bench-augment-") as tmp:
        path = Path(tmp) / "cache.h5"
        write_synthetic_cache(str(path), SynthSettings(cases=args.cases, shape=tuple(args.shape), seed=7),
                              test_fraction=0.5)
        reader = CacheReader(path, threads=1)
        ids = list(reader.case_ids)
        for cid in ids:  # warm: page cache, chunk indexes
            reader.read_case(cid)
        console.print(f"{args.cases} cases of 4 x {' x '.join(map(str, args.shape))}; {args.repeats} repeats x "
                      f"{args.samples} samples per contender; 1 torch thread, 1 decompression thread")
        table = Table("patch", "augment", "patches/s per worker: median (range)", f"workers for {args.target:g}/s",
                      "x light")
        results: dict[str, dict] = {}
        for size in args.sizes:
            datasets = {name: dataset(reader, ids, size, name, seed=3) for name in CONTENDERS}
            for d in datasets.values():
                d[0]  # first-call costs (imports, MONAI's caches)
            rates = interleaved(datasets, args.samples, args.repeats)
            light = statistics.median(rates["light"])
            for name in CONTENDERS:
                med = statistics.median(rates[name])
                workers = math.ceil(args.target / med)
                results[f"{name} {size}"] = {"patches_per_s": round(med, 2),
                                             "range": [round(min(rates[name]), 2), round(max(rates[name]), 2)],
                                             "workers_for_target": workers}
                table.add_row(f"{size}^3", name, f"{med:.1f} ({min(rates[name]):.1f}-{max(rates[name]):.1f})",
                              str(workers), f"{med / light:.2f}")
        console.print(table)
        out = {"bench": "augment", "target_patches_per_s": args.target, "results": results}
        if args.breakdown:
            parts = {size: breakdown(reader, ids[0], size, args.repeats) for size in args.sizes}
            detail = Table("transform", *[f"{s}^3 ms when it fires" for s in args.sizes],
                           *[f"{s}^3 expected ms per sample" for s in args.sizes])
            for key in parts[args.sizes[0]]:
                detail.add_row(key, *[str(parts[s][key]["ms_when_fired"]) for s in args.sizes],
                               *[str(parts[s][key]["expected_ms"]) for s in args.sizes])
            console.print(detail)
            out["breakdown"] = {str(s): v for s, v in parts.items()}
        reader.close()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
