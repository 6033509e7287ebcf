"""Patch reads: the prism cache against an nnU-Net-style blosc2 ``.b2nd`` array per case, interleaved and repeated.

Same BraTS-sized phantoms (4 x 140 x 170 x 140, the brain box of a 4 x 155 x 240 x 240 case) in every format, same
random patch positions, in one process. Every format reads every case whole once before timing (page cache, chunk
indexes and each chunk's first-decode check warm). Then, for each repeat, a fresh set of positions is drawn and the
formats take turns patch by patch, the order rotating from patch to patch, so a busy machine slows them alike. Each
row reports the median time per patch over all repeats and, in brackets, the range of the per-repeat medians; each
ratio against ``.b2nd`` is the median over patches of (``.b2nd`` time / this format's time) for the same position
read back to back, with its interquartile range.

Two ways of reading, each compared with ``.b2nd`` read the same way:
- new arrays: each read returns a new array (nnU-Net slices its arrays this way);
- into buffers: each read writes into arrays reused from read to read (``CacheReader.read_patch(out=...)``,
  ``blosc2.NDArray.read_into``), as a loader filling preallocated or pinned batch buffers would.

Formats (the names in the tables): "prism cache (default)", as written by default (chunks of every modality, 16 x 16
voxels by whole rows of the last axis, one Blosc2 block per chunk, LZ4HC clevel 9 + shuffle, read directly with the
default decompression threads), "prism cache, ZSTD 8" (the smaller, slower setting: ``CacheWriter(codec="zstd",
clevel=8)``, same chunks), and two blosc2 ``.b2nd`` layouts, each case's image and
segmentation an NDArray opened with ``mmap_mode="r"`` and one decompression thread, as nnU-Net reads them
(``nnunetv2/training/dataloading/nnunet_dataset.py``): ".b2nd LZ4HC 8, 80^3/40^3" (LZ4HC clevel 8 + shuffle, one
channel per chunk, 80^3 chunks of 40^3 blocks: the fast-decoding variant the cache is held to) and ".b2nd nnU-Net
defaults" (what nnU-Net writes: ZSTD clevel 8 + shuffle, image float32 and segmentation int16, blocks and chunks by
its rule for its 128^3 BraTS patch, see :func:`nnunet_layout`).
Disk counts each case as written: the prism file holds image, label, metadata and foreground points; nnU-Net writes
per case the image and segmentation ``.b2nd`` and a properties pickle whose sampled foreground coordinates are the
counterpart of prism's (:func:`nnunet_properties`; the image and label alone are printed too).
After the tables, each prism setting's ratios, its disk against both ``.b2nd`` layouts, and whether it meets the
target: a median ratio of at least 1 against both layouts, read both ways at every size, on no more disk than
nnU-Net's defaults.
``--all`` adds cubic cache chunks (32^3, LZ4HC 8, every modality or one per chunk), the cache read
through HDF5's filters (Fletcher32 checked), uncompressed HDF5, whole-volume ``.npy`` loads (RFNet/PASSION) and a
floor (a patch copied out of a case already in memory).

Usage: python benchmarks/bench_cache.py [--cases 4] [--patches 20] [--repeats 5] [--sizes 80 128]
       [--shape 140 170 140] [--all] [--loader-batches 0]
"""

from __future__ import annotations

import argparse
import json
import math
import pickle
import shutil
import tempfile
import time
from collections.abc import Callable
from itertools import product
from pathlib import Path

import blosc2
import h5py
import numpy as np
import torch
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from torch.utils.data import DataLoader

from prism.data.cache_format import BRATS_LABELS
from prism.data.cache_reader import CacheReader, default_threads
from prism.data.cache_writer import CacheWriter
from prism.data.patches import PatchDataset, RankSampler, collate_batch
from prism.data_tools.synthetic import SynthSettings, make_case
from prism.modalities import BRATS_MODALITIES

PRISM = "prism cache (default)"
SMALL = "prism cache, ZSTD 8"  # ~6% less disk than the default, reads patches at about half its speed
CACHES = {PRISM: {}, SMALL: {"codec": "zstd", "clevel": 8}}  # name: writer options
B2ND = ".b2nd LZ4HC 8, 80^3/40^3"  # chunks / blocks
NNUNET = ".b2nd nnU-Net defaults"  # ZSTD 8, blocks and chunks by nnunet_layout for 128^3 patches
CUBES = {  # --all: cubic chunks (the earliest default), label: writer options
    "prism, 32^3 chunks, LZ4HC 8": {"chunk": 32, "codec": "lz4hc", "clevel": 8},
    "prism, 32^3 chunks, LZ4HC 8, 1 modality per chunk": {"chunk": 32, "codec": "lz4hc", "clevel": 8, "fused": False},
}
Reader = Callable[[str, tuple[int, ...], int], object]
#: nnU-Net's BraTS regions (whole tumour, tumour core, enhancing tumour) in prism's label values
BRATS_REGIONS = ((1, 2, 3), (1, 3), (3,))


def nnunet_properties(label: np.ndarray, regions=BRATS_REGIONS, samples: int = 10000, seed: int = 1234) -> dict:
    """The per-case properties nnU-Net pickles next to its arrays, as its preprocessor
    (``nnunetv2/preprocessing/preprocessors/default_preprocessor.py``) describes them, written here from that
    description: for each foreground region, int64 coordinates ``[N, 4]`` (channel, z, y, x) of voxels drawn
    without replacement, ``N = max(min(samples, n), ceil(n / 100))`` of the region's ``n`` voxels; plus the few
    shape and spacing entries (small beside the coordinates)."""
    rng = np.random.RandomState(seed)
    locations = {}
    for region in regions:
        coords = np.argwhere(np.isin(label, region)[None])
        n = max(min(samples, len(coords)), math.ceil(len(coords) / 100))
        locations[region] = coords[rng.choice(len(coords), n, replace=False)] if len(coords) else []
    shape = list(label.shape)
    return {"class_locations": locations, "spacing": [1.0, 1.0, 1.0], "shape_before_cropping": shape,
            "bbox_used_for_cropping": [[0, n] for n in shape], "shape_after_cropping_and_before_resampling": shape}


def write_properties(tmp: Path, cid: str, label: np.ndarray) -> Path:
    path = tmp / f"{cid}.pkl"
    with open(path, "wb") as f:
        pickle.dump(nnunet_properties(label), f)
    return path


def write_cache(path: Path, ids: list[str], cases: list, **options) -> Path:
    with CacheWriter(path, modalities=BRATS_MODALITIES, labels=BRATS_LABELS, **options) as w:
        for cid, (img, lab, _) in zip(ids, cases, strict=True):
            w.add_case(cid, img, lab, availability=[True] * 4)
        w.set_split("train", ids)
    return path


def write_b2nd(tmp: Path, ids: list[str], cases: list) -> tuple[list[Path], dict[str, tuple]]:
    """Each case as nnU-Net stores it: image ``[M, D, H, W]`` and segmentation as blosc2 NDArrays (LZ4HC clevel 8,
    chunks 80^3, blocks 40^3 per channel), reopened with ``mmap_mode="r"`` and one decompression thread, and its
    properties pickle (:func:`nnunet_properties`). Returns (the files written, case id -> (image, label))."""
    files, arrays = [], {}
    cparams = {"codec": blosc2.Codec.LZ4HC, "clevel": 8}
    for cid, (img, lab, _) in zip(ids, cases, strict=True):
        x, y = tmp / f"{cid}.b2nd", tmp / f"{cid}_seg.b2nd"
        blosc2.asarray(np.ascontiguousarray(img), urlpath=str(x), mode="w", chunks=(1, 80, 80, 80),
                       blocks=(1, 40, 40, 40), cparams=cparams)
        blosc2.asarray(np.ascontiguousarray(lab), urlpath=str(y), mode="w", chunks=(80, 80, 80), blocks=(40, 40, 40),
                       cparams=cparams)
        files += [x, y, write_properties(tmp, cid, lab)]
        arrays[cid] = tuple(blosc2.open(str(f), mode="r", mmap_mode="r", dparams={"nthreads": 1}) for f in (x, y))
    return files, arrays


def nnunet_layout(image_shape: tuple[int, ...], patch: tuple[int, ...], itemsize: int) -> tuple[tuple[int, ...],
                                                                                                 tuple[int, ...]]:
    """(blocks, chunks) of a ``[C, D, H, W]`` array as nnU-Net's ``nnUNetDatasetBlosc2.comp_blosc2_params``
    (``nnunetv2/training/dataloading/nnunet_dataset.py``) describes them, written here from that description: a
    block holds every channel and, per axis, the power of two at or above the patch edge, halved (the axis whose
    block is largest relative to the patch first, the last such axis on ties) until it fits 80% of a 32 KiB L1
    cache; a chunk tiles blocks (the axis with the fewest blocks first) until it fills 80% of 1.375 MiB of L3 cache,
    reaches the image, or would average more than 1.5 patches per axis."""
    block = [image_shape[0], *[2 ** max(0, math.ceil(math.log2(p))) for p in patch]]
    while math.prod(block) * itemsize > 0.8 * 32768:
        ratios = [block[i + 1] / patch[i] for i in range(len(patch))]
        axis = max((i for i in range(len(patch)) if block[i + 1] > 1), key=lambda i: (ratios[i], i))
        block[axis + 1] = min(2 ** max(0, math.floor(math.log2(block[axis + 1] - 1))), image_shape[axis + 1])
    block = [min(b, n) for b, n in zip(block, image_shape, strict=True)]
    chunk = list(block)
    while math.prod(chunk) * itemsize < 0.8 * 1441792 and chunk != list(image_shape):
        free = [i for i in range(len(patch)) if chunk[i + 1] < image_shape[i + 1]]
        axis = min(free, key=lambda i: (chunk[i + 1] / block[i + 1], i))
        chunk[axis + 1] = min(chunk[axis + 1] + block[axis + 1], image_shape[axis + 1])
        if np.mean([c / p for c, p in zip(chunk[1:], patch, strict=True)]) > 1.5:
            chunk[axis + 1] -= block[axis + 1]
            break
    return tuple(block), tuple(min(c, n) for c, n in zip(chunk, image_shape, strict=True))


def write_nnunet(tmp: Path, ids: list[str], cases: list, patch: int) -> tuple[list[Path], dict[str, tuple]]:
    """Each case with nnU-Net's own defaults: image float32 ``[C, D, H, W]`` and segmentation int16 ``[1, D, H, W]``,
    blocks and chunks by :func:`nnunet_layout` for its patch size, ZSTD clevel 8 (``save_case``'s default codec), and
    its properties pickle."""
    files, arrays = [], {}
    cparams = {"codec": blosc2.Codec.ZSTD, "clevel": 8}
    for cid, (img, lab, _) in zip(ids, cases, strict=True):
        x, y = tmp / f"{cid}.nnunet.b2nd", tmp / f"{cid}_seg.nnunet.b2nd"
        seg = lab[None].astype(np.int16)
        for path, array in ((x, img), (y, seg)):
            blocks, chunks = nnunet_layout(array.shape, (patch,) * 3, array.itemsize)
            blosc2.asarray(np.ascontiguousarray(array), urlpath=str(path), mode="w", chunks=chunks, blocks=blocks,
                           cparams=cparams)
        files += [x, y, write_properties(tmp, f"{cid}.nnunet", lab)]
        arrays[cid] = tuple(blosc2.open(str(f), mode="r", mmap_mode="r", dparams={"nthreads": 1}) for f in (x, y))
    return files, arrays


def readers_for(p: int, b2nd: dict[str, dict], caches: dict[str, CacheReader]) -> dict[str, tuple[Reader, Reader]]:
    """Per format: (read into a new array, read into reused buffers) of a ``p``^3 patch at a start. ``b2nd``: per
    format, case id -> (image, label) NDArrays (a label with a leading channel axis is read with it)."""
    image_buf = np.empty((len(BRATS_MODALITIES), p, p, p), np.float32)
    label_bufs = {1: np.empty((p, p, p), np.uint8), 2: np.empty((1, p, p, p), np.int16)}

    def b2nd_pair(arrays: dict) -> tuple[Reader, Reader]:
        def box(label, s: tuple[int, ...], p: int) -> tuple:
            sl = tuple(slice(a, a + p) for a in s)
            return (slice(None), *sl), ((slice(None), *sl) if label.ndim == 4 else sl)

        def new(cid: str, s: tuple[int, ...], p: int) -> object:
            image, label = arrays[cid]
            at_image, at_label = box(label, s, p)
            return image[at_image], label[at_label]

        def into(cid: str, s: tuple[int, ...], p: int) -> object:
            image, label = arrays[cid]
            at_image, at_label = box(label, s, p)
            return image.read_into(image_buf, at_image), label.read_into(label_bufs[label.dtype.itemsize], at_label)

        return new, into

    out = {name: b2nd_pair(arrays) for name, arrays in b2nd.items()}
    label_buf = label_bufs[1]
    for name, reader in caches.items():
        out[name] = (lambda cid, s, p, r=reader: r.read_patch(cid, s, (p, p, p)),
                     lambda cid, s, p, r=reader: r.read_patch(cid, s, (p, p, p), out=(image_buf, label_buf)))
    return out


def interleaved(fns: dict[str, Reader], ids: list[str], shape: tuple[int, ...], p: int, patches: int, repeats: int
                ) -> dict[str, np.ndarray]:
    """Times ``[repeats, patches]`` per format: positions drawn per repeat, formats in turn patch by patch."""
    names = list(fns)
    times = {name: np.zeros((repeats, patches)) for name in names}
    for r in range(repeats):
        rng = np.random.default_rng((p, r))
        plan = [(ids[int(rng.integers(len(ids)))], tuple(int(rng.integers(0, s - p + 1)) for s in shape))
                for _ in range(patches)]
        for j, (cid, start) in enumerate(plan):
            k = (r * patches + j) % len(names)
            for name in names[k:] + names[:k]:  # the order rotates: no format always reads first
                t0 = time.perf_counter()
                fns[name](cid, start, p)
                times[name][r, j] = time.perf_counter() - t0
    return times


def spread(times: np.ndarray) -> str:
    """``median [min-max of the per-repeat medians]`` in ms."""
    per_repeat = np.median(times, axis=1) * 1e3
    return f"{np.median(times) * 1e3:.1f} [{per_repeat.min():.1f}-{per_repeat.max():.1f}]"


def ratio(reference: np.ndarray, times: np.ndarray) -> tuple[float, float, float, float, float]:
    """(median, first and third quartile of the per-patch ratios, min and max of the per-repeat median ratios)."""
    r = reference / times
    q1, med, q3 = np.percentile(r, [25, 50, 75])
    per_repeat = np.median(r, axis=1)
    return float(med), float(q1), float(q3), float(per_repeat.min()), float(per_repeat.max())


def extra_formats(tmp: Path, ids: list[str], cases: list, default_path: Path) -> tuple[dict[str, Reader],
                                                                                         dict[str, int], list]:
    """--all: cubic chunks, the HDF5 filter path, uncompressed HDF5, whole-volume .npy loads and the floor."""
    fns: dict[str, Reader] = {}
    sizes: dict[str, int] = {}
    closers: list = []
    for name, options in CUBES.items():
        path = write_cache(tmp / f"{len(sizes)}.h5", ids, cases, **options)
        reader = CacheReader(path)
        fns[name], sizes[name] = (lambda cid, s, p, r=reader: r.read_patch(cid, s, (p, p, p))), path.stat().st_size
        closers.append(reader)
    checked = CacheReader(default_path, checksums=True)
    fns["prism default through HDF5's filters (Fletcher32 checked)"] = (
        lambda cid, s, p: checked.read_patch(cid, s, (p, p, p)))
    sizes["prism default through HDF5's filters (Fletcher32 checked)"] = default_path.stat().st_size
    closers.append(checked)
    plain = tmp / "plain.h5"
    with h5py.File(plain, "w") as f:
        for cid, (img, lab, _) in zip(ids, cases, strict=True):
            f[f"{cid}/image"], f[f"{cid}/label"] = img, lab
    plain_f = h5py.File(plain, "r")
    closers.append(plain_f)

    def plain_patch(cid: str, s: tuple[int, ...], p: int) -> object:
        sl = tuple(slice(a, a + p) for a in s)
        return plain_f[f"{cid}/image"][(slice(None), *sl)], plain_f[f"{cid}/label"][sl]

    fns["HDF5 uncompressed"], sizes["HDF5 uncompressed"] = plain_patch, plain.stat().st_size
    npy = 0
    for cid, (img, lab, _) in zip(ids, cases, strict=True):  # RFNet stores x [H, W, D, M] float32 and y uint8
        np.save(tmp / f"{cid}_x.npy", np.ascontiguousarray(img.transpose(1, 2, 3, 0)))
        np.save(tmp / f"{cid}_y.npy", lab)
        npy += (tmp / f"{cid}_x.npy").stat().st_size + (tmp / f"{cid}_y.npy").stat().st_size

    def npy_patch(cid: str, s: tuple[int, ...], p: int) -> object:
        x, y = np.load(tmp / f"{cid}_x.npy"), np.load(tmp / f"{cid}_y.npy")
        sl = tuple(slice(a, a + p) for a in s)
        return np.ascontiguousarray(x[sl].transpose(3, 0, 1, 2)), np.ascontiguousarray(y[sl])

    fns["npy whole volume (RFNet/PASSION)"], sizes["npy whole volume (RFNet/PASSION)"] = npy_patch, npy
    in_ram = {cid: (img, lab) for cid, (img, lab, _) in zip(ids, cases, strict=True)}

    def ram_patch(cid: str, s: tuple[int, ...], p: int) -> object:
        sl = tuple(slice(a, a + p) for a in s)
        return np.ascontiguousarray(in_ram[cid][0][(slice(None), *sl)]), np.ascontiguousarray(in_ram[cid][1][sl])

    fns["floor: copy out of an in-RAM array"], sizes["floor: copy out of an in-RAM array"] = ram_patch, 0
    return fns, sizes, closers


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=4)
    ap.add_argument("--patches", type=int, default=20, help="patch positions per repeat (default 20)")
    ap.add_argument("--repeats", type=int, default=5, help="repeats, each with new positions (default 5)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[80, 128], help="patch edges (default 80 128)")
    ap.add_argument("--shape", type=int, nargs=3, default=(140, 170, 140))
    ap.add_argument("--all", action="store_true", help="also cubic chunks and the other formats")
    ap.add_argument("--loader-batches", type=int, default=0, help="DataLoader patches/s over N batches (0: skip)")
    args = ap.parse_args(argv)
    console = Console(width=180, highlight=False)
    tmp = Path(tempfile.mkdtemp(prefix="prism-bench-"))
    try:
        shape = tuple(args.shape)
        cases = [make_case(i, SynthSettings(shape=shape, seed=7)) for i in range(args.cases)]
        ids = [f"case{i}" for i in range(args.cases)]
        paths = {name: write_cache(tmp / f"prism{k}.h5", ids, cases, **options)
                 for k, (name, options) in enumerate(CACHES.items())}
        default_path = paths[PRISM]
        b2nd_files, b2nd = write_b2nd(tmp, ids, cases)
        nnunet_files, nnunet = write_nnunet(tmp, ids, cases, 128)
        sizes = {name: path.stat().st_size for name, path in paths.items()}
        sizes.update({B2ND: sum(f.stat().st_size for f in b2nd_files),
                      NNUNET: sum(f.stat().st_size for f in nnunet_files)})
        arrays_only = {name: sum(f.stat().st_size for f in files if f.suffix == ".b2nd")
                       for name, files in ((B2ND, b2nd_files), (NNUNET, nnunet_files))}
        prism_readers = {name: CacheReader(path) for name, path in paths.items()}
        extra, extra_sizes, closers = extra_formats(tmp, ids, cases, default_path) if args.all else ({}, {}, [])
        sizes.update(extra_sizes)
        for reader in [*prism_readers.values(), *[c for c in closers if isinstance(c, CacheReader)]]:
            for cid in ids:  # warm: page cache, chunk indexes, every chunk's first-decode check
                reader.read_case(cid)
        for arrays in (b2nd, nnunet):
            for cid in ids:
                arrays[cid][0][()], arrays[cid][1][()]
        threads = default_threads()
        console.print(f"{args.cases} cases of 4 x {' x '.join(map(str, shape))}, {args.repeats} repeats x "
                      f"{args.patches} positions per patch size; decompression threads: prism {threads} (default), "
                      f".b2nd 1; torch threads {torch.get_num_threads()}")
        headline: dict[str, list[str]] = {name: [] for name in CACHES}
        slower: dict[str, list[str]] = {name: [] for name in CACHES}  # where a median ratio is below 1
        ratios: dict[str, dict[str, list[float]]] = {name: {} for name in CACHES}  # the JSON line's ratios
        for p in args.sizes:
            both = readers_for(p, {B2ND: b2nd, NNUNET: nnunet}, prism_readers)
            fns = {f"{name} | new arrays": pair[0] for name, pair in both.items()}
            fns.update({f"{name} | into buffers": pair[1] for name, pair in both.items()})
            fns.update({f"{name} | new arrays": fn for name, fn in extra.items()})
            times = interleaved(fns, ids, shape, p, args.patches, args.repeats)
            table = Table(title=escape(f"{p}^3 patches: ms per patch, median [range of per-repeat medians]; ratios = "
                                       "the .b2nd's time / this time, same position read the same way, median "
                                       "[quartiles]"))
            for col in ("format", "read", "disk bytes", "ms per patch", "vs LZ4HC .b2nd", "vs nnU-Net defaults"):
                table.add_column(col, justify="left" if col in ("format", "read") else "right")
            for name, t in times.items():
                fmt, how = name.split(" | ")
                cells = []
                for ref_name in (B2ND, NNUNET):
                    ref = times.get(f"{ref_name} | {how}")
                    if ref is None:  # --all formats are read into new arrays only
                        ref = times[f"{ref_name} | new arrays"]
                    med, q1, q3, lo, hi = ratio(ref, t)
                    cells.append(f"{med:.2f}x [{q1:.2f}-{q3:.2f}]")
                    if fmt in CACHES:
                        against = "LZ4HC .b2nd" if ref_name == B2ND else "nnU-Net defaults"
                        headline[fmt].append(f"{p}^3 {how} vs {against}: {med:.2f}x (per-repeat medians "
                                             f"{lo:.2f}-{hi:.2f}, patch quartiles {q1:.2f}-{q3:.2f})")
                        if med < 1:
                            slower[fmt].append(f"{p}^3 {how} vs {against}")
                        ratios[fmt][f"{p} {how} vs {against}"] = [round(v, 3) for v in (med, q1, q3, lo, hi)]
                table.add_row(fmt, how, str(sizes[fmt]), spread(t), *cells)
            console.print(table)
        for name in CACHES:
            console.print(f"{name}, same run, speed relative to (>1: prism faster):")
            for line in headline[name]:
                console.print("  " + line)
            console.print(f"  disk: {sizes[name]} bytes vs .b2nd {sizes[B2ND]} = {sizes[name] / sizes[B2ND]:.3f}x, vs "
                          f"nnU-Net's defaults {sizes[NNUNET]} = {sizes[name] / sizes[NNUNET]:.3f}x (each case as "
                          "written: prism image + label + metadata + foreground points; .b2nd image + label + "
                          f"properties pickle); against the .b2nd image + label alone ({arrays_only[B2ND]} and "
                          f"{arrays_only[NNUNET]}): {sizes[name] / arrays_only[B2ND]:.3f}x and "
                          f"{sizes[name] / arrays_only[NNUNET]:.3f}x")
            missed = slower[name] + (["more disk than nnU-Net's defaults"] if sizes[name] > sizes[NNUNET] else [])
            console.print(f"  target (median ratio >= 1 against both .b2nd layouts at every size, disk <= nnU-Net's "
                          f"defaults): {'met' if not missed else 'NOT met: ' + '; '.join(missed)}")
        verdicts = {name: not slower[name] and sizes[name] <= sizes[NNUNET] for name in CACHES}
        print(json.dumps({"bench": "cache", "cases": args.cases, "shape": list(shape), "repeats": args.repeats,
                          "patches": args.patches, "disk_bytes": sizes, "b2nd_arrays_bytes": arrays_only,
                          "ratios_median_q1_q3_repeat_min_max": ratios, "target_met": verdicts}))
        if args.loader_batches > 0:
            loader_table(console, default_path, ids, args.sizes, args.loader_batches)
        for c in [*prism_readers.values(), *closers]:
            c.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def loader_table(console: Console, cache: Path, ids: list[str], sizes: list[int], batches: int) -> None:
    table = Table(title="DataLoader (PatchDataset, prism default, batch 2, flips, 1/3 foreground)")
    for col in ("patch", "workers", "patches/s", "patches/s per worker"):
        table.add_column(col, justify="right")
    for p, workers in product(sizes, (1, 2)):
        ds = PatchDataset(CacheReader(cache), ids, (p, p, p), seed=0)
        dl = DataLoader(ds, batch_size=2, sampler=RankSampler(0, 2), collate_fn=collate_batch,
                        num_workers=workers, prefetch_factor=2)
        it = iter(dl)
        next(it)
        t0 = time.perf_counter()
        for _ in range(batches):
            next(it)
        rate = 2 * batches / (time.perf_counter() - t0)
        del it
        table.add_row(f"{p}^3", str(workers), f"{rate:.1f}", f"{rate / workers:.1f}")
    console.print(table)


if __name__ == "__main__":
    main()
