"""Write a prism cache atomically: everything goes to a temporary file that is renamed into place at the end."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import h5py
import hdf5plugin
import numpy as np

from .. import __version__
from ..atomic import (
    StorageError,
    ensure_folder,
    fsync_dir,
    mark_unsafe_to_finalize,
    remove_stale_temporaries,
    storage_cause,
    storage_error,
    temp_path,
)
from ..errors import CacheError
from .cache_format import (
    DEFAULT_CHUNK,
    FOREGROUND_SAMPLES,
    FORMAT_NAME,
    FORMAT_VERSION,
    SOURCES_PATH,
    chunk_shape,
    settings_hash,
)

#: Blosc2 pre-filters by name (``shuffle`` option of the writer)
SHUFFLES = {"byte": hdf5plugin.Blosc2.SHUFFLE, "bit": hdf5plugin.Blosc2.BITSHUFFLE, "none": hdf5plugin.Blosc2.NOFILTER}
#: Blosc2 codecs the writer accepts
CODECS = ("lz4", "blosclz", "lz4hc", "zstd", "zlib")


def _filters(codec: str, clevel: int, shuffle: str, chunk_bytes: int) -> dict[str, Any]:
    """HDF5 dataset options: Blosc2 with one block per chunk (cd_values[1] = block size; the direct reader decodes
    such a chunk in one call, see direct_chunks), then Fletcher32."""
    options = dict(hdf5plugin.Blosc2(cname=codec, clevel=clevel, filters=SHUFFLES[shuffle]))
    cd = list(options["compression_opts"])
    cd[1] = int(chunk_bytes)
    options["compression_opts"] = tuple(cd)
    return dict(fletcher32=True, **options)


def foreground_points(label: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """Up to ``count`` coordinates ``[N, 3]`` drawn without replacement from the label's non-zero voxels."""
    coords = np.argwhere(label > 0)
    if len(coords) > count:
        coords = coords[np.sort(rng.choice(len(coords), size=count, replace=False))]
    return coords.astype(np.int32)


def _dataset(group: h5py.Group, name: str, data: np.ndarray, **options: Any) -> h5py.Dataset:
    """Create ``group[name]`` and write ``data`` into it; on a failed write the dataset is closed here, so the
    error is raised (and reported in one line) rather than printed by h5py when the object is freed."""
    ds = group.create_dataset(name, shape=data.shape, dtype=data.dtype, **options)
    try:
        if data.size:
            ds[...] = data
    except BaseException:
        _close_now([ds], raise_first=False)
        raise
    return ds


def _close_now(objects: Sequence[Any], *, raise_first: bool = True) -> None:
    """Close h5py objects now, flushing what they hold: a write that fails (full or read-only disk) raises its
    OSError / RuntimeError here instead of being printed by h5py when the objects are freed. Every object is
    closed; the first error is raised (``raise_first``)."""
    first: BaseException | None = None
    for obj in objects:
        try:
            obj.id.close()
        except (OSError, RuntimeError) as exc:
            first = first or exc
    if first is not None and raise_first:
        raise first


def _positive_spacing(case_id: str, spacing: Sequence[float]) -> np.ndarray:
    out = np.asarray(spacing, dtype=np.float64)
    if out.shape != (3,) or not (np.isfinite(out).all() and (out > 0).all()):
        raise CacheError(f"case {case_id}: spacing must be three positive finite sizes, got {out.tolist()}")
    return out


def _unlink_quietly(path: Path) -> None:
    """Remove a temporary file; a folder that refuses (read-only, gone) leaves nothing to remove or to report."""
    try:
        path.unlink()
    except OSError:
        pass


class CacheWriter:
    """Context manager writing a cache; on error or interruption the temporary file is removed.

    >>> with CacheWriter(path, modalities=("flair", "t1ce", "t1", "t2"), labels=BRATS_LABELS) as w:
    ...     w.add_case("case_000", image, label, availability=[True] * 4)
    ...     w.set_split("train", ["case_000"])
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        modalities: Sequence[str],
        labels: Mapping[int, str],
        label_map: Mapping[int, int] | None = None,
        preprocessing: Mapping[str, Any] | None = None,
        sources: Sequence[Mapping[str, Any]] = (),
        source_root: str = "",
        chunk: int | Sequence[int] = DEFAULT_CHUNK,
        seed: int = 0,
        codec: str = "lz4hc",
        clevel: int = 9,
        shuffle: str = "byte",
        fused: bool = True,
    ) -> None:
        """``codec`` / ``clevel`` / ``shuffle`` ("byte", "bit", "none") choose the Blosc2 compression of image and
        label chunks (any choice is format v1: the HDF5 filter records it, and caches written with any of them
        read the same way). The default, LZ4HC clevel 9 + byte shuffle, decodes at LZ4's speed (LZ4HC streams are
        LZ4 streams with longer matches) and is the smallest LZ4 setting. ``codec="zstd", clevel=8`` stores ~6%
        less (its entropy coder packs the exponent bytes LZ4 keeps as literals) but decodes a chunk ~2.6x slower and
        reads a patch at about half the speed; benchmarks/bench_cache.py compares both with nnU-Net's files.
        ``chunk``: the spatial chunk edges, one for every axis or three, where 0 takes the whole axis in equal
        parts of at most 192 voxels (:func:`~prism.data.cache_format.chunk_shape`). The default, 16 x 16 voxels
        by whole rows of the last axis, makes a patch copy move rows as long as the patch instead of 32-voxel
        pieces (numpy copies a 4 x 128^3 patch out of 32^3 chunks ~5x slower than out of such rows: the per-row
        cost dominates) and decodes less outside a 128^3 patch (1.4x its volume instead of 1.9x for 32^3 cubes);
        measured in benchmarks/bench_cache.py. An int is a cube edge (the earlier default was 32).
        ``fused``: image chunks hold every modality, ``(M, ...)`` (default), instead of one each, ``(1, ...)``
        (the earlier layout; both are format v1 and read the same way). Every read takes all modalities, so fusing
        costs no extra decoding; it stores M times fewer chunks (each Blosc2 frame costs ~280 bytes, each HDF5 chunk
        index entry ~60) and the zero background of all modalities compresses as one run."""
        if codec not in CODECS or shuffle not in SHUFFLES or not 0 <= int(clevel) <= 9:
            raise CacheError(f"compression: codec must be one of {list(CODECS)}, shuffle one of {list(SHUFFLES)}, "
                             f"clevel 0..9 (got {codec!r}, {shuffle!r}, {clevel!r})")
        self._compression = (codec, int(clevel), shuffle)
        self.fused = bool(fused)
        self.path = Path(path)
        self.tmp_path = temp_path(self.path)  # carries host and pid: stale ones are removed only when dead
        self.modalities = tuple(modalities)
        self.labels = {int(k): str(v) for k, v in labels.items()}
        self.label_map = {int(k): int(v) for k, v in (label_map or {}).items()}
        self.preprocessing = dict(preprocessing or {})
        self.sources = [dict(s) for s in sources]
        self.source_root = str(source_root)
        try:
            chunk_shape(chunk, (1, 1, 1))
        except (TypeError, ValueError):
            raise CacheError(f"chunk: one edge or three (0: the whole axis), each >= 0; got {chunk!r}") from None
        self.chunk = chunk
        self._rng = np.random.default_rng(seed)
        self._file: h5py.File | None = None
        self._case_ids: list[str] = []
        self._lost: list[BaseException] = []  # write errors HDF5 raised where Python could only print them
        self._previous_hook: Any = None

    def _unraisable(self, info: Any) -> None:
        """h5py reports a failed write while freeing an object as an "Exception ignored" print: keep it instead,
        so the build fails with one line (see :meth:`_check_lost`)."""
        if storage_cause(info.exc_value) is not None:
            self._lost.append(info.exc_value)
        else:
            self._previous_hook(info)

    def _check_lost(self) -> None:
        if self._lost:
            raise StorageError(f"{self.path}: cannot write the cache: {storage_cause(self._lost[0])}")

    def __enter__(self) -> CacheWriter:
        if self.path.is_dir():
            raise StorageError(f"{self.path}: cannot write the cache: is a folder")
        ensure_folder(self.path.parent)
        remove_stale_temporaries(self.path.parent, self.path.name)  # of killed builds (their writer is dead)
        try:
            self._file = h5py.File(self.tmp_path, "w")
        except OSError as exc:
            _unlink_quietly(self.tmp_path)
            raise storage_error(self.path, exc, "cannot write the cache") from None
        self._previous_hook, sys.unraisablehook = sys.unraisablehook, self._unraisable
        try:
            self._start_file(self._file)
        except BaseException as exc:  # the temporary file goes, the hook is restored, a storage fault is one line
            self.__exit__(type(exc), exc, exc.__traceback__)
            raise
        return self

    def _start_file(self, f: h5py.File) -> None:
        a = f.attrs
        a["prism_format"] = FORMAT_NAME
        a["format_version"] = FORMAT_VERSION
        a["prism_version"] = __version__
        a["modalities"] = json.dumps(list(self.modalities))
        a["labels"] = json.dumps({str(k): v for k, v in sorted(self.labels.items())})
        a["label_map"] = json.dumps({str(k): v for k, v in sorted(self.label_map.items())})
        a["preprocessing"] = json.dumps(self.preprocessing, sort_keys=True, default=str)
        a["preprocessing_hash"] = settings_hash(self.preprocessing)
        a["source_root"] = self.source_root
        a["created"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        a["complete"] = False
        f.create_group("cases")
        f.create_group("splits")

    @property
    def file(self) -> h5py.File:
        if self._file is None:
            raise RuntimeError("CacheWriter is not open; use it as a context manager")
        return self._file

    def add_case(
        self,
        case_id: str,
        image: np.ndarray,
        label: np.ndarray,
        *,
        availability: Sequence[bool],
        spacing: Sequence[float] = (1.0, 1.0, 1.0),
        affine: np.ndarray | None = None,
        crop_box: np.ndarray | None = None,
        original_shape: Sequence[int] | None = None,
        site: str = "",
        present: Sequence[bool] | None = None,
        foreground: np.ndarray | None = None,
        original_spacing: Sequence[float] | None = None,
    ) -> None:
        """Add one preprocessed case: image float ``[M, D, H, W]``, label int ``[D, H, W]``.

        ``present`` says which modality files exist (default: ``availability``); ``availability`` may be narrower
        (an experiment's missing-modality split). ``foreground`` is a precomputed sample of foreground voxel
        coordinates ``[N, 3]``; by default it is drawn here. ``original_spacing``: the source's voxel size when the
        case was resampled to ``spacing`` (then ``crop_box`` is in source voxels and the stored shape differs from
        its size; predictions are resampled back before they are put in place).
        """
        m = len(self.modalities)
        if image.ndim != 4 or image.shape[0] != m:
            raise CacheError(f"case {case_id}: image must be [{m}, D, H, W], got {image.shape}")
        if label.shape != image.shape[1:]:
            raise CacheError(f"case {case_id}: label shape {label.shape} != image shape {image.shape[1:]}")
        if len(availability) != m or (present is not None and len(present) != m):
            raise CacheError(f"case {case_id}: availability and present need {m} entries each")
        if case_id in self._case_ids or "/" in case_id or not case_id:
            raise CacheError(f"case id {case_id!r} is empty, contains '/', or is duplicated")
        unknown = sorted(set(np.unique(label).tolist()) - set(self.labels))
        if unknown:
            raise CacheError(f"case {case_id}: label values {unknown} are not in the label map {sorted(self.labels)}")
        bad = [self.modalities[c] for c in range(m) if not np.isfinite(image[c]).all()]
        if bad:
            raise CacheError(f"case {case_id}: modality {bad[0]} holds NaN or Inf voxels")
        spacing = _positive_spacing(case_id, spacing)
        affine = np.eye(4) if affine is None else np.asarray(affine, dtype=np.float64)
        if affine.shape != (4, 4) or not np.isfinite(affine).all():
            raise CacheError(f"case {case_id}: affine must be a finite 4 x 4 matrix")
        self._check_space(case_id, image.size * 4 + label.size)
        spatial = image.shape[1:]
        chunk = chunk_shape(self.chunk, spatial)
        image_chunk = (m if self.fused else 1, *chunk)
        voxels = int(np.prod(chunk))
        if foreground is None:
            foreground = foreground_points(label, FOREGROUND_SAMPLES, self._rng)
        group = self.file["cases"].create_group(case_id)
        written = [group]
        try:
            written.append(_dataset(group, "image", image.astype(np.float32, copy=False), chunks=image_chunk,
                                    **_filters(*self._compression, chunk_bytes=4 * image_chunk[0] * voxels)))
            written.append(_dataset(group, "label", label.astype(np.uint8, copy=False), chunks=chunk,
                                    **_filters(*self._compression, chunk_bytes=voxels)))
            written.append(_dataset(group, "foreground", np.asarray(foreground, dtype=np.int32).reshape(-1, 3),
                                    compression="gzip", shuffle=True))  # 49 -> ~9 KB per case
            group.attrs["availability"] = np.asarray(availability, dtype=np.uint8)
            group.attrs["present"] = np.asarray(availability if present is None else present, dtype=np.uint8)
            group.attrs["spacing"] = spacing
            group.attrs["affine"] = affine
            box = np.stack([np.zeros(3, int), np.asarray(spatial)], axis=1) if crop_box is None else crop_box
            group.attrs["crop_box"] = np.asarray(box, dtype=np.int64)
            group.attrs["original_shape"] = np.asarray(original_shape or spatial, dtype=np.int64)
            group.attrs["site"] = site
            if original_spacing is not None:
                group.attrs["original_spacing"] = _positive_spacing(case_id, original_spacing)
        finally:
            _close_now(written)
        del group, written
        self._check_lost()
        self._case_ids.append(case_id)

    def _check_space(self, case_id: str, raw_bytes: int) -> None:
        """Refuse a case the disk cannot hold even uncompressed (plus 1 MiB): HDF5 running out of space while
        writing leaves its library in a state that crashes the interpreter, so it must not get there."""
        try:
            st = os.statvfs(self.tmp_path.parent)
        except OSError:
            return
        free = st.f_bavail * st.f_frsize
        if free < raw_bytes + (1 << 20):
            raise StorageError(f"{self.path}: cannot write the cache: no space left on the device "
                               f"({free / 2**20:.1f} MiB free; case {case_id} needs up to "
                               f"{raw_bytes / 2**20:.1f} MiB + 1 MiB)")

    def add_sources(self, sources: Sequence[Mapping[str, Any]]) -> None:
        """Record source files (dicts with case, role, path, size, sha256) in the provenance."""
        self.sources.extend(dict(s) for s in sources)

    def set_split(self, name: str, case_ids: Sequence[str]) -> None:
        """Store a named split (train, val, test, ...) of case ids already added."""
        missing = sorted(set(case_ids) - set(self._case_ids))
        if missing:
            raise CacheError(f"split '{name}' names cases not in the cache: {missing[:5]}")
        if name in self.file["splits"]:
            del self.file["splits"][name]
        _close_now([_dataset(self.file["splits"], name, np.array(list(case_ids), dtype=h5py.string_dtype()))])

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        f = self._file
        self._file = None
        if f is None:
            return
        try:
            self._finish(f, exc_type, exc)
        finally:
            if self._previous_hook is not None:
                sys.unraisablehook, self._previous_hook = self._previous_hook, None

    def _finish(self, f: h5py.File, exc_type: type[BaseException] | None, exc: BaseException | None) -> None:
        if exc_type is not None or self._lost:
            cause = storage_cause(exc) if exc is not None else None
            if cause is None and self._lost:
                cause = storage_cause(self._lost[0])
            self._abandon(f, failed_write=cause is not None)
            if cause is not None:  # HDF5's multi-line report of a full or read-only disk: one line instead
                raise StorageError(f"{self.path}: cannot write the cache: {cause}") from None
            return
        try:
            sources = json.dumps(self.sources, sort_keys=True)
            _close_now([f.create_dataset(SOURCES_PATH, data=sources, dtype=h5py.string_dtype())])
            f.attrs["complete"] = True
            f.flush()
            f.close()
            with open(self.tmp_path, "rb") as fh:
                os.fsync(fh.fileno())
            os.replace(self.tmp_path, self.path)
        except (OSError, RuntimeError) as err:
            self._abandon(f)
            raise storage_error(self.path, err, "cannot write the cache") from None
        fsync_dir(self.path.parent)

    def _abandon(self, f: h5py.File, *, failed_write: bool = False) -> None:
        """Drop the temporary file of a failed build. On a full disk HDF5 cannot flush its metadata and a plain
        close leaves the library in a state that crashes the interpreter at exit; unlinking the file and
        truncating it through the open descriptor first frees the space, so the close succeeds. After a write
        that failed inside HDF5 (``failed_write``) the file is left alone: the process must not finalise HDF5."""
        if self._lost or failed_write:  # HDF5 failed inside its own clean-up: any further call may crash it
            _unlink_quietly(self.tmp_path)
            mark_unsafe_to_finalize()
            return
        fd = None
        if f.id.valid:
            try:
                fd = f.id.get_vfd_handle()
            except Exception:  # drivers without a file descriptor
                fd = None
        _unlink_quietly(self.tmp_path)
        if fd is not None:
            try:
                os.ftruncate(fd, 0)
            except OSError:
                pass
        try:
            f.close()
        except Exception:  # the file is gone; a close that still fails has nothing left to lose
            pass
