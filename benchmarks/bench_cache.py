"""Patch reads from the prism cache vs whole-volume .npy loading (RFNet/PASSION) vs uncompressed HDF5.

Same BraTS-sized phantoms (4 x 140 x 170 x 140, the brain box of a 4 x 155 x 240 x 240 case) and the same random
patch positions for every format, in one run, warm page cache. Also disk size and DataLoader patches/s per worker.
Usage: python benchmarks/bench_cache.py [--cases 4] [--reads 20] [--shape 140 170 140]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import torch
from prism.data_tools.synthetic import SynthSettings, make_case
from rich.console import Console
from rich.table import Table
from torch.utils.data import DataLoader

from prism.data.cache_format import BRATS_LABELS
from prism.data.cache_reader import CacheReader
from prism.data.cache_writer import CacheWriter
from prism.data.patches import CountingSampler, PatchDataset, collate_batch
from prism.modalities import BRATS_MODALITIES


def dir_size(paths: list[Path]) -> int:
    return sum(p.stat().st_size for p in paths)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--cases", type=int, default=4)
    ap.add_argument("--reads", type=int, default=20, help="patch reads per format and size")
    ap.add_argument("--shape", type=int, nargs=3, default=(140, 170, 140))
    ap.add_argument("--loader-batches", type=int, default=12)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="prism-bench-"))
    cases = [make_case(i, SynthSettings(shape=tuple(args.shape), seed=7)) for i in range(args.cases)]
    ids = [f"case{i}" for i in range(args.cases)]
    npy_files = []
    for cid, (img, lab, _) in zip(ids, cases, strict=True):  # RFNet stores x [H, W, D, M] float32 and y uint8
        np.save(tmp / f"{cid}_x.npy", np.ascontiguousarray(img.transpose(1, 2, 3, 0)))
        np.save(tmp / f"{cid}_y.npy", lab)
        npy_files += [tmp / f"{cid}_x.npy", tmp / f"{cid}_y.npy"]
    plain = tmp / "plain.h5"
    with h5py.File(plain, "w") as f:
        for cid, (img, lab, _) in zip(ids, cases, strict=True):
            f[f"{cid}/image"], f[f"{cid}/label"] = img, lab
    cache = tmp / "cache.h5"
    with CacheWriter(cache, modalities=BRATS_MODALITIES, labels=BRATS_LABELS) as w:
        for cid, (img, lab, _) in zip(ids, cases, strict=True):
            w.add_case(cid, img, lab, availability=[True] * 4)
        w.set_split("train", ids)
    reader = CacheReader(cache)
    plain_f = h5py.File(plain, "r")

    def npy_patch(cid: str, s: tuple[int, ...], p: int) -> None:
        x, y = np.load(tmp / f"{cid}_x.npy"), np.load(tmp / f"{cid}_y.npy")
        np.ascontiguousarray(x[s[0]:s[0] + p, s[1]:s[1] + p, s[2]:s[2] + p].transpose(3, 0, 1, 2))
        np.ascontiguousarray(y[s[0]:s[0] + p, s[1]:s[1] + p, s[2]:s[2] + p])

    def plain_patch(cid: str, s: tuple[int, ...], p: int) -> None:
        sl = tuple(slice(a, a + p) for a in s)
        plain_f[f"{cid}/image"][(slice(None), *sl)], plain_f[f"{cid}/label"][sl]

    def cache_patch(cid: str, s: tuple[int, ...], p: int) -> None:
        reader.read_patch(cid, s, (p, p, p))

    loaders = {"npy whole volume (RFNet/PASSION)": npy_patch, "HDF5 uncompressed": plain_patch,
               "prism cache (Blosc2-LZ4, 32^3)": cache_patch}
    sizes = {"npy whole volume (RFNet/PASSION)": dir_size(npy_files), "HDF5 uncompressed": plain.stat().st_size,
             "prism cache (Blosc2-LZ4, 32^3)": cache.stat().st_size}
    rng = np.random.default_rng(0)
    table = Table(title=f"patch reads, {args.cases} cases of 4 x {' x '.join(map(str, args.shape))}")
    table.add_column("format")
    table.add_column("disk MB", justify="right")
    table.add_column("size vs npy", justify="right")
    for p in (80, 128):
        table.add_column(f"{p}^3 ms/patch", justify="right")
        table.add_column(f"{p}^3 speed-up", justify="right")
    rows = {name: [f"{sizes[name] / 1e6:.1f}", f"{sizes[name] / sizes['npy whole volume (RFNet/PASSION)']:.2f}"]
            for name in loaders}
    for p in (80, 128):
        plan = [(ids[rng.integers(len(ids))], tuple(int(rng.integers(0, s - p + 1)) for s in args.shape))
                for _ in range(args.reads)]
        times = {}
        for name, fn in loaders.items():
            fn(*plan[0], p)  # warm up
            t0 = time.perf_counter()
            for cid, s in plan:
                fn(cid, s, p)
            times[name] = (time.perf_counter() - t0) / len(plan)
        base = times["npy whole volume (RFNet/PASSION)"]
        for name in loaders:
            rows[name] += [f"{times[name] * 1e3:.1f}", f"{base / times[name]:.1f}x"]
    for name, cells in rows.items():
        table.add_row(name, *cells)
    console = Console()
    console.print(table)
    plain_f.close()
    reader.close()

    lt = Table(title="DataLoader (PatchDataset from the cache, batch 2, flips, 1/3 foreground)")
    for col in ("patch", "workers", "patches/s", "patches/s per worker"):
        lt.add_column(col, justify="right")
    for p in (80, 128):
        for workers in (1, 2):
            ds = PatchDataset(CacheReader(cache), ids, (p, p, p), seed=0)
            dl = DataLoader(ds, batch_size=2, sampler=CountingSampler(), collate_fn=collate_batch,
                            num_workers=workers, prefetch_factor=2)
            it = iter(dl)
            next(it)
            t0 = time.perf_counter()
            for _ in range(args.loader_batches):
                next(it)
            rate = 2 * args.loader_batches / (time.perf_counter() - t0)
            del it
            lt.add_row(f"{p}^3", str(workers), f"{rate:.1f}", f"{rate / workers:.1f}")
    console.print(lt)
    console.print(f"torch threads {torch.get_num_threads()}")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
