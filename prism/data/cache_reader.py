"""Read a prism cache: validated on open, file handle opened lazily (and again after a fork, per worker).

Patches are read by default straight from the Blosc2 chunks (``direct_chunks``: memory-mapped file, chunks
decompressed in a thread pool, Fletcher32 not checked); ``checksums=True`` reads through HDF5's filter pipeline
instead, which checks every chunk's Fletcher32 sum (as ``prism-data verify`` does).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import h5py
import hdf5plugin  # noqa: F401  (registers the Blosc2 filter with HDF5)
import numpy as np

from ..errors import CacheError
from .cache_format import FORMAT_NAME, READABLE_VERSIONS, SOURCES_PATH
from .cache_meta import (
    CaseInfo,
    Corrupt,
    case_info,
    check_groups,
    format_version,
    is_complete,
    read_sources,
    read_splits,
    root_info,
)
from .direct_chunks import ChunkIndex, DirectChunkReader, NonFiniteChunk, chunk_index
from .splits import FOLD_SPLIT


def default_threads() -> int:
    """Decompression threads per reader: one inside a DataLoader worker (workers are the parallelism), else
    half the CPUs this process may use, at most 4 (on 2 cores a second thread measured slower than one)."""
    from torch.utils.data import get_worker_info

    if get_worker_info() is not None:
        return 1
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(4, cpus // 2))


#: what h5py and the JSON / text decoding raise on damaged metadata
_CORRUPT = (OSError, RuntimeError, KeyError, ValueError, TypeError, UnicodeDecodeError)


def _first_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:160]


class CacheReader:
    """Reads cases, patches and splits from a cache file. Safe to pass to DataLoader workers.

    ``checksums``: read patches and cases through HDF5 (every chunk's Fletcher32 checked) instead of decoding the
    Blosc2 chunks directly (faster, no checksum). ``threads``: decompression threads for direct reads (None:
    ``default_threads()``, decided in the process that reads).
    """

    def __init__(self, path: str | os.PathLike[str], *, checksums: bool = False, threads: int | None = None) -> None:
        self.path = Path(path)
        self.checksums = bool(checksums)
        self.threads = threads
        self._file: h5py.File | None = None
        self._pid: int | None = None
        self._direct: DirectChunkReader | None = None
        self._index: dict[str, ChunkIndex | None] = {}
        f = self._open()
        try:
            attrs = dict(f.attrs)
            root = root_info(attrs)
            self.modalities: tuple[str, ...] = root.modalities
            self.labels: dict[int, str] = root.labels
            self.label_map: dict[int, int] = root.label_map
            self.preprocessing: dict[str, Any] = root.preprocessing
            self.preprocessing_hash: str = str(attrs.get("preprocessing_hash", ""))
            self.format_version = format_version(attrs)
            self.prism_version = str(attrs.get("prism_version", ""))
            self.source_root: str = str(attrs.get("source_root", ""))
            self.created: str = str(attrs.get("created", ""))
            self.case_ids: tuple[str, ...] = tuple(sorted(f["cases"].keys()))
            self.splits: dict[str, tuple[str, ...]] = read_splits(f)
            self._sources = read_sources(f, SOURCES_PATH)
        except Corrupt as exc:
            self.close()
            raise CacheError(f"{self.path}: the cache's metadata is corrupted: {exc}; rebuild the cache") from None
        except _CORRUPT as exc:
            self.close()
            raise CacheError(f"{self.path}: the cache's metadata is corrupted ({_first_line(exc)}); "
                             "rebuild it (prism-data verify shows more)") from None
        self._info: dict[str, CaseInfo] = {}
        self._fingerprint: str | None = None
        self._check_metadata()

    def _check_metadata(self) -> None:
        """Trust on open: every split names stored cases and every case's metadata reads (a corrupt case is named
        here, before anything is trained or written; chunk contents are checked by ``prism-data verify``)."""
        known = set(self.case_ids)
        for name, members in self.splits.items():
            lost = [c for c in members if c not in known]
            if lost:
                self.close()
                raise CacheError(f"{self.path}: corrupted: split '{name}' names case '{lost[0]}' that the cache does "
                                 f"not hold ({len(lost)} such); rebuild it")
        try:
            for case_id in self.case_ids:
                self.info(case_id)
        except CacheError:
            self.close()
            raise

    @property
    def sources(self) -> list[dict[str, Any]]:
        """Provenance: one dict (case, role, path, size, sha256) per source file; empty for synthetic caches."""
        return [dict(s) for s in self._sources]

    @property
    def fingerprint(self) -> str:
        """16 hex digits naming the dataset the cache holds, whatever its layout or compression: modalities,
        labels, label map, and per case its id, shape, availability, geometry, site, foreground samples and the
        centre voxels of its image and label; the source files' hashes when recorded. Splits are not part of it
        (``prism-data split`` keeps it); a cache rebuilt from other data, or preprocessed differently, changes it.
        A run records it in its checkpoints and ``--resume`` refuses a cache whose fingerprint changed."""
        if self._fingerprint is None:
            h = hashlib.sha256()
            h.update(json.dumps([self.modalities, sorted(self.labels.items()), sorted(self.label_map.items())]
                                ).encode())
            for case_id in self.case_ids:
                info = self.info(case_id)
                centre = tuple(max(0, s // 2 - 2) for s in info.shape)
                image, label = self.read_patch(case_id, centre, (4, 4, 4))
                h.update(json.dumps([case_id, info.shape, info.availability, info.spacing, info.crop_box.tolist(),
                                     info.original_shape, info.site, info.affine.round(6).tolist()]).encode())
                h.update(np.ascontiguousarray(self.foreground(case_id)).tobytes())
                h.update(image.tobytes() + label.tobytes())
            h.update(json.dumps(sorted(s.get("sha256", "") for s in self.sources)).encode())
            self._fingerprint = h.hexdigest()[:16]
        return self._fingerprint

    def _open(self) -> h5py.File:
        if self._file is not None and self._pid == os.getpid():
            return self._file
        self._direct, self._index = None, {}  # a parent's thread pool and mapping are not this process's
        if not self.path.is_file():
            raise CacheError(f"{self.path}: cache file not found")
        try:
            f = h5py.File(self.path, "r")
        except OSError as exc:
            raise CacheError(f"{self.path}: not a readable HDF5 file (truncated or corrupted?): {exc}") from None
        try:
            attrs = dict(f.attrs)
            if attrs.get("prism_format") != FORMAT_NAME:
                f.close()
                raise CacheError(f"{self.path}: not a prism cache (no prism_format attribute)")
            version = format_version(attrs)
            check_groups(f)
            complete = is_complete(attrs) and "cases" in f and "splits" in f
        except Corrupt as exc:
            f.close()
            raise CacheError(f"{self.path}: the cache's metadata is corrupted: {exc}; rebuild the cache") from None
        except _CORRUPT as exc:
            f.close()
            raise CacheError(f"{self.path}: the cache's metadata is corrupted ({_first_line(exc)}); "
                             "rebuild it") from None
        if version not in READABLE_VERSIONS:
            f.close()
            raise CacheError(
                f"{self.path}: cache format version {version} cannot be read by this prism "
                f"(reads {sorted(READABLE_VERSIONS)}); rebuild it with prism-data"
            )
        if not complete:
            f.close()
            raise CacheError(f"{self.path}: cache is incomplete (its build was interrupted); rebuild it")
        self._file, self._pid = f, os.getpid()
        return f

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_file"] = None  # never share an HDF5 handle across processes
        state["_pid"] = None
        state["_direct"] = None
        state["_index"] = {}
        return state

    def close(self) -> None:
        if self._file is not None and self._pid == os.getpid():
            self._file.close()
            if self._direct is not None:
                self._direct.close()
        self._file = None
        self._direct = None
        self._index = {}

    def _direct_index(self, case_id: str, name: str) -> ChunkIndex | None:
        """The chunk index of ``/cases/<case_id>/<name>`` when it can be read directly (opens the reader)."""
        if self.checksums:
            return None
        self._open()
        if self._direct is None:
            self._direct = DirectChunkReader(self.path, self.threads or default_threads())
        key = f"{case_id}/{name}"
        if key not in self._index:
            try:
                self._index[key] = chunk_index(self._case(case_id)[name])
            except _CORRUPT as exc:
                raise CacheError(f"{self.path}: case '{case_id}' is corrupted ({name} chunk index: "
                                 f"{_first_line(exc)}); rebuild the cache") from None
        return self._index[key]

    def _read_box(self, case_id: str, name: str, lo: tuple[int, ...], hi: tuple[int, ...],
                  out: np.ndarray | None = None) -> np.ndarray:
        if out is not None:
            want = (tuple(b - a for a, b in zip(lo, hi, strict=True)), np.dtype(np.float32 if name == "image" else
                                                                             np.uint8))
            if (out.shape, out.dtype) != want or not out.flags.c_contiguous:
                raise ValueError(f"out must be C-contiguous {want[1]} of shape {want[0]}, got {out.dtype} "
                                 f"{out.shape}")
        index = self._direct_index(case_id, name)
        if index is not None:
            try:
                return self._direct.read(index, lo, hi, out)
            except NonFiniteChunk as exc:
                raise self._non_finite(case_id, name, exc.first_axis) from None
            except (ValueError, RuntimeError) as exc:
                raise CacheError(f"{self.path}: case '{case_id}' is corrupted: {name} chunk: {exc}") from None
        data = self._case(case_id)[name][tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))]
        if data.dtype.kind == "f" and not np.isfinite(data).all():  # HDF5 path: every read is checked
            rows = np.flatnonzero(~np.isfinite(data.reshape(data.shape[0], -1)).all(axis=1))
            raise self._non_finite(case_id, name, tuple(int(lo[0] + r) for r in rows))
        if out is not None:
            np.copyto(out, data)
            return out
        return data

    def _non_finite(self, case_id: str, name: str, first_axis: tuple[int, ...]) -> CacheError:
        what = name
        if name == "image":
            what = "image, modality " + ", ".join(self.modalities[i] for i in first_axis if i < len(self.modalities))
        return CacheError(f"{self.path}: case '{case_id}' is corrupted: {what} holds NaN or Inf voxels; rebuild "
                          "the cache (prism-data verify names every such case)")

    @property
    def num_modalities(self) -> int:
        return len(self.modalities)

    def split(self, name: str) -> tuple[str, ...]:
        """The case ids of split ``name``; a CacheError listing the splits there are when it does not exist."""
        if name not in self.splits:
            hint = "; make cross-validation folds with prism-data split CACHE --folds K" if FOLD_SPLIT.match(
                name) else ""
            raise CacheError(f"{self.path}: no split '{name}' (has {sorted(self.splits) or 'none'}){hint}")
        return self.splits[name]

    def _case(self, case_id: str) -> h5py.Group:
        f = self._open()
        try:
            return f["cases"][case_id]
        except KeyError:
            raise CacheError(f"{self.path}: no case '{case_id}'") from None
        except _CORRUPT as exc:
            raise CacheError(f"{self.path}: case '{case_id}' is corrupted ({_first_line(exc)})") from None

    def info(self, case_id: str) -> CaseInfo:
        """The case's metadata; a CacheError naming the case when it is missing or corrupted."""
        if case_id not in self._info:
            g = self._case(case_id)
            try:
                self._info[case_id] = case_info(case_id, g, len(self.modalities))
            except Corrupt as exc:
                raise CacheError(f"{self.path}: case '{case_id}' is corrupted: {exc}; rebuild the cache") from None
            except _CORRUPT as exc:
                raise CacheError(f"{self.path}: case '{case_id}' is corrupted ({_first_line(exc)}); "
                                 "rebuild the cache") from None
        return self._info[case_id]

    def foreground(self, case_id: str) -> np.ndarray:
        """Stored foreground voxel coordinates ``int [N, 3]`` of the case (checked inside its volume on open)."""
        self.info(case_id)
        return self._case(case_id)["foreground"][()]

    def read_case(self, case_id: str) -> tuple[np.ndarray, np.ndarray]:
        """Whole case: image float32 ``[M, D, H, W]`` and label uint8 ``[D, H, W]``."""
        shape = self.info(case_id).shape
        try:
            return (self._read_box(case_id, "image", (0, 0, 0, 0), (self.num_modalities, *shape)),
                    self._read_box(case_id, "label", (0, 0, 0), shape))
        except OSError as exc:
            raise CacheError(f"{self.path}: case '{case_id}' is corrupted: {exc}") from None

    def read_patch(self, case_id: str, start: tuple[int, int, int], size: tuple[int, int, int],
                   out: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The patch at ``start`` of ``size`` (clipped to the volume): only the chunks it touches are read.
        ``out``: (image, label) arrays to write into, of the clipped patch's shapes (``float32 [M, d, h, w]``,
        ``uint8 [d, h, w]``, C-contiguous), e.g. buffers reused from read to read; new arrays when None."""
        shape = self.info(case_id).shape
        lo = tuple(min(max(s, 0), d) for s, d in zip(start, shape, strict=True))
        hi = tuple(min(a + max(n, 0), d) for a, n, d in zip(lo, size, shape, strict=True))
        image_out, label_out = out if out is not None else (None, None)
        try:
            return (self._read_box(case_id, "image", (0, *lo), (self.num_modalities, *hi), image_out),
                    self._read_box(case_id, "label", lo, hi, label_out))
        except OSError as exc:
            raise CacheError(f"{self.path}: case '{case_id}' is corrupted: {exc}") from None

    def read_region(self, case_id: str, start: tuple[int, ...], size: tuple[int, ...]
                    ) -> tuple[np.ndarray, np.ndarray]:
        """Exactly ``size`` voxels from ``start`` (which may lie partly outside the volume): outside is zero."""
        shape = self.info(case_id).shape
        lo = [max(s, 0) for s in start]
        hi = [min(s + n, d) for s, n, d in zip(start, size, shape, strict=True)]
        if all(a == s for a, s in zip(lo, start, strict=True)) and all(
                b - a == n for a, b, n in zip(lo, hi, size, strict=True)):
            return self.read_patch(case_id, tuple(lo), tuple(size))
        image = np.zeros((self.num_modalities, *size), np.float32)
        label = np.zeros(tuple(size), np.uint8)
        if all(b > a for a, b in zip(lo, hi, strict=True)):
            img, lab = self.read_patch(case_id, tuple(lo), tuple(b - a for a, b in zip(lo, hi, strict=True)))
            dst = tuple(slice(a - s, b - s) for a, b, s in zip(lo, hi, start, strict=True))
            image[(slice(None), *dst)] = img
            label[dst] = lab
        return image, label


def dataset_changed_message(checkpoint: Path, recorded: str, reader: CacheReader) -> str:
    """One line for a resume whose checkpoint was trained on another dataset than ``reader``'s cache holds now."""
    return (f"{checkpoint}: the run was trained on another dataset than {reader.path} holds now (dataset "
            f"fingerprint {recorded}, the cache's {reader.fingerprint}): the cache was rebuilt or replaced; resume "
            "with the cache the run was trained on, or start a new run")
