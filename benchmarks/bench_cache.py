"""Patch reads from the prism cache vs whole-volume .npy loading (RFNet/PASSION) vs uncompressed HDF5.

Same BraTS-sized phantoms (4 x 140 x 170 x 140, the brain box of a 4 x 155 x 240 x 240 case) and the same random
patch positions for every format, in one run, warm page cache (every format reads the whole plan once before it
is timed). The formats take turns patch by patch, so a busy machine slows them alike; the median is reported.
Formats: whole-volume .npy as RFNet/PASSION load it (np.load of the case, then crop), the floor (the patch copied
out of a case already in memory: no format can beat it, so it bounds every speed-up), uncompressed HDF5, the
prism cache through HDF5's filter pipeline (Fletcher32 checked: ``CacheReader(checksums=True)``), the prism
cache read directly (the default: Blosc2 chunks decoded in a thread pool, 1 thread and the default count), with
the default layout and compression (all modalities in one chunk, one Blosc2 block per chunk, LZ4HC clevel 8 +
shuffle) and the earlier ones (one modality per chunk), and an nnU-Net-style blosc2 ``.b2nd``
array per case opened with mmap (LZ4HC clevel 8, 80^3 chunks, 40^3 blocks, one decompression thread).
Also disk size, the prism default against the .b2nd format (same run), and DataLoader patches/s per worker.
Usage: python benchmarks/bench_cache.py [--cases 4] [--reads 20] [--shape 140 170 140] [--chunks 32 ...]
       [--loader-batches 0: no DataLoader table]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from itertools import product
from pathlib import Path

import blosc2
import h5py
import numpy as np
import torch
from rich.console import Console
from rich.table import Table
from torch.utils.data import DataLoader

from prism.data.cache_format import BRATS_LABELS, DEFAULT_CHUNK
from prism.data.cache_reader import CacheReader, default_threads
from prism.data.cache_writer import CacheWriter
from prism.data.patches import PatchDataset, RankSampler, collate_batch
from prism.data_tools.synthetic import SynthSettings, make_case
from prism.modalities import BRATS_MODALITIES

DEFAULT_LABEL = "LZ4HC l8 + shuffle, all modalities/chunk"
PER_MODALITY_LABEL = "LZ4HC l8 + shuffle, 1 modality/chunk (earlier default)"
B2ND_NAME = "nnU-Net-style .b2nd (LZ4HC l8, 80^3 chunks, 40^3 blocks, mmap)"


def dir_size(paths: list[Path]) -> int:
    return sum(p.stat().st_size for p in paths)


def write_b2nd(tmp: Path, ids: list[str], cases: list) -> tuple[list[Path], dict[str, tuple]]:
    """Each case as nnU-Net stores it: image ``[M, D, H, W]`` and label as blosc2 NDArrays (LZ4HC clevel 8, chunks
    80^3, blocks 40^3 per channel), reopened with ``mmap_mode="r"`` and one decompression thread."""
    files, arrays = [], {}
    cparams = {"codec": blosc2.Codec.LZ4HC, "clevel": 8}
    for cid, (img, lab, _) in zip(ids, cases, strict=True):
        x, y = tmp / f"{cid}.b2nd", tmp / f"{cid}_seg.b2nd"
        blosc2.asarray(np.ascontiguousarray(img), urlpath=str(x), mode="w", chunks=(1, 80, 80, 80),
                       blocks=(1, 40, 40, 40), cparams=cparams)
        blosc2.asarray(np.ascontiguousarray(lab), urlpath=str(y), mode="w", chunks=(80, 80, 80), blocks=(40, 40, 40),
                       cparams=cparams)
        files += [x, y]
        arrays[cid] = tuple(blosc2.open(str(f), mode="r", mmap_mode="r", dparams={"nthreads": 1}) for f in (x, y))
    return files, arrays


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--cases", type=int, default=4)
    ap.add_argument("--reads", type=int, default=20, help="patch reads per format and size")
    ap.add_argument("--shape", type=int, nargs=3, default=(140, 170, 140))
    ap.add_argument("--loader-batches", type=int, default=12, help="0: skip the DataLoader table")
    ap.add_argument("--chunks", type=int, nargs="+", default=[DEFAULT_CHUNK], help="cache chunk edges to compare")
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
    caches = {}  # (chunk, compression label) -> path
    settings = [(chunk, DEFAULT_LABEL, {}) for chunk in args.chunks]
    settings.append((args.chunks[0], PER_MODALITY_LABEL, {"fused": False}))
    settings.append((args.chunks[0], "LZ4 l5 + shuffle, 1 modality/chunk (first default)",
                     {"codec": "lz4", "clevel": 5, "fused": False}))
    settings.append((args.chunks[0], "LZ4 l1, no shuffle, all modalities/chunk",
                     {"codec": "lz4", "clevel": 1, "shuffle": "none"}))
    for chunk, label, compression in settings:
        path = caches[chunk, label] = tmp / f"cache{chunk}-{len(caches)}.h5"
        with CacheWriter(path, modalities=BRATS_MODALITIES, labels=BRATS_LABELS, chunk=chunk, **compression) as w:
            for cid, (img, lab, _) in zip(ids, cases, strict=True):
                w.add_case(cid, img, lab, availability=[True] * 4)
            w.set_split("train", ids)
    plain_f = h5py.File(plain, "r")

    def npy_patch(cid: str, s: tuple[int, ...], p: int) -> None:
        x, y = np.load(tmp / f"{cid}_x.npy"), np.load(tmp / f"{cid}_y.npy")
        np.ascontiguousarray(x[s[0]:s[0] + p, s[1]:s[1] + p, s[2]:s[2] + p].transpose(3, 0, 1, 2))
        np.ascontiguousarray(y[s[0]:s[0] + p, s[1]:s[1] + p, s[2]:s[2] + p])

    def plain_patch(cid: str, s: tuple[int, ...], p: int) -> None:
        sl = tuple(slice(a, a + p) for a in s)
        plain_f[f"{cid}/image"][(slice(None), *sl)], plain_f[f"{cid}/label"][sl]

    def reader_patch(reader: CacheReader):
        return lambda cid, s, p: reader.read_patch(cid, s, (p, p, p))

    in_ram = {cid: (img, lab) for cid, (img, lab, _) in zip(ids, cases, strict=True)}

    def ram_patch(cid: str, s: tuple[int, ...], p: int) -> None:
        sl = tuple(slice(a, a + p) for a in s)
        np.ascontiguousarray(in_ram[cid][0][(slice(None), *sl)]), np.ascontiguousarray(in_ram[cid][1][sl])

    b2nd_files, b2nd = write_b2nd(tmp, ids, cases)

    def b2nd_patch(cid: str, s: tuple[int, ...], p: int) -> None:
        sl = tuple(slice(a, a + p) for a in s)
        image, label = b2nd[cid]
        image[(slice(None), *sl)], label[sl]

    npy_name = "npy whole volume (RFNet/PASSION)"
    ram_name = "floor: copy out of an in-RAM array"
    loaders = {npy_name: npy_patch, ram_name: ram_patch, "HDF5 uncompressed": plain_patch, B2ND_NAME: b2nd_patch}
    sizes = {npy_name: dir_size(npy_files), ram_name: 0, "HDF5 uncompressed": plain.stat().st_size,
             B2ND_NAME: dir_size(b2nd_files)}
    readers = []
    threads = default_threads()
    for (chunk, label), path in caches.items():
        tag = f"prism {chunk}^3 {label}"
        variants = {f"{tag}, HDF5 filters + Fletcher32": CacheReader(path, checksums=True),
                    f"{tag}, direct, 1 thread": CacheReader(path, threads=1)}
        if threads > 1:
            variants[f"{tag}, direct, {threads} threads (default)"] = CacheReader(path)
        for name, reader in variants.items():
            loaders[name], sizes[name] = reader_patch(reader), path.stat().st_size
            readers.append(reader)
        snapped = CacheReader(path)  # PatchDataset(snap=chunk): other (chunk-aligned) positions, same reader
        loaders[f"{tag}, direct, chunk-aligned starts"] = (
            lambda cid, s, p, r=snapped, c=chunk: r.read_patch(cid, tuple(a - a % c for a in s), (p, p, p)))
        sizes[f"{tag}, direct, chunk-aligned starts"] = path.stat().st_size
        readers.append(snapped)
    rng = np.random.default_rng(0)
    table = Table(title=f"patch reads, {args.cases} cases of 4 x {' x '.join(map(str, args.shape))}, "
                        f"median of {args.reads}")
    table.add_column("format")
    table.add_column("disk MB", justify="right")
    table.add_column("size vs npy", justify="right")
    for p in (80, 128):
        table.add_column(f"{p}^3 ms/patch", justify="right")
        table.add_column(f"{p}^3 speed-up", justify="right")
    rows = {name: [f"{sizes[name] / 1e6:.1f}", f"{sizes[name] / sizes[npy_name]:.2f}"] for name in loaders}
    medians: dict[int, dict[str, float]] = {}
    for p in (80, 128):
        plan = [(ids[rng.integers(len(ids))], tuple(int(rng.integers(0, s - p + 1)) for s in args.shape))
                for _ in range(args.reads)]
        times: dict[str, list[float]] = {name: [] for name in loaders}
        for fn in loaders.values():  # warm: page cache, chunk indexes, thread pools
            for cid, s in plan:
                fn(cid, s, p)
        for cid, s in plan:
            for name, fn in loaders.items():
                t0 = time.perf_counter()
                fn(cid, s, p)
                times[name].append(time.perf_counter() - t0)
        med = {name: float(np.median(t)) for name, t in times.items()}
        medians[p] = med
        for name in loaders:
            rows[name] += [f"{med[name] * 1e3:.1f}", f"{med[npy_name] / med[name]:.1f}x"]
    for name, cells in rows.items():
        table.add_row(name, *cells)
    console = Console(width=160)
    console.print(table)
    direct = ", direct, " + (f"{threads} threads (default)" if threads > 1 else "1 thread")
    for what, label in (("prism default", DEFAULT_LABEL), ("earlier layout", PER_MODALITY_LABEL)):
        name = f"prism {args.chunks[0]}^3 {label}{direct}"
        console.print(f"{what} ({name}) against {B2ND_NAME}, same run: "
                      + ", ".join(f"{p}^3 read {medians[p][B2ND_NAME] / medians[p][name]:.2f}x as fast"
                                  for p in medians)
                      + f"; disk {sizes[name] / 1e6:.3f} vs {sizes[B2ND_NAME] / 1e6:.3f} MB = "
                      f"{sizes[name] / sizes[B2ND_NAME]:.3f}x (prism: image + label + metadata + foreground points; "
                      ".b2nd: image + label)", highlight=False)
    plain_f.close()
    for reader in readers:
        reader.close()
    first = [(label, path) for (chunk, label), path in caches.items() if chunk == args.chunks[0]]

    lt = Table(title=f"DataLoader (PatchDataset, prism {args.chunks[0]}^3 direct, batch 2, flips, 1/3 foreground)")
    for col in ("cache", "patch", "workers", "patches/s", "patches/s per worker"):
        lt.add_column(col, justify="right")
    for (label, cache), p, workers in product(first if args.loader_batches > 0 else [], (80, 128), (1, 2)):
        ds = PatchDataset(CacheReader(cache), ids, (p, p, p), seed=0)
        dl = DataLoader(ds, batch_size=2, sampler=RankSampler(0, 2), collate_fn=collate_batch,
                        num_workers=workers, prefetch_factor=2)
        it = iter(dl)
        next(it)
        t0 = time.perf_counter()
        for _ in range(args.loader_batches):
            next(it)
        rate = 2 * args.loader_batches / (time.perf_counter() - t0)
        del it
        lt.add_row(label, f"{p}^3", str(workers), f"{rate:.1f}", f"{rate / workers:.1f}")
    if args.loader_batches > 0:
        console.print(lt)
    console.print(f"torch threads {torch.get_num_threads()}, default decompression threads {threads}")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
