"""Check a prism cache end to end: format, every chunk (Fletcher32), per-case attributes, optionally its sources."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import hdf5plugin  # noqa: F401  (registers the Blosc2 filter)
import numpy as np

from ..atomic import is_temporary
from ..errors import CacheError
from .cache_format import (
    FORMAT_NAME,
    READABLE_VERSIONS,
    ROOT_ATTRS,
    SOURCES_PATH,
    settings_hash,
)
from .cache_meta import (
    Corrupt,
    case_info,
    check_groups,
    format_version,
    is_complete,
    read_sources,
    read_splits,
    root_info,
)


@dataclass
class VerifyReport:
    """What was checked; ``problems`` is empty for a sound cache."""

    path: Path
    cases: int = 0
    chunks_read: int = 0
    sources_checked: int = 0
    problems: list[str] = field(default_factory=list)

    def raise_if_bad(self) -> None:
        if self.problems:
            more = f" (and {len(self.problems) - 1} more problems)" if len(self.problems) > 1 else ""
            raise CacheError(f"{self.path}: {self.problems[0]}{more}")


def file_digest(path: str | os.PathLike[str]) -> tuple[int, str]:
    """(size in bytes, SHA-256 hex) of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
            size += len(block)
    return size, h.hexdigest()


def _read_all(ds: h5py.Dataset) -> tuple[np.ndarray, int]:
    """Read a dataset chunk by chunk (each read decompresses and checks one chunk's Fletcher32 sum)."""
    out = np.empty(ds.shape, ds.dtype)
    if ds.chunks is None:
        ds.read_direct(out)
        return out, 1
    count = 0
    ranges = [range(0, n, c) for n, c in zip(ds.shape, ds.chunks, strict=True)]
    for idx in np.ndindex(*(len(r) for r in ranges)):
        sl = tuple(slice(r[i], r[i] + c) for r, i, c in zip(ranges, idx, ds.chunks, strict=True))
        out[sl] = ds[sl]
        count += 1
    return out, count


def _check_case(f: h5py.File, case: str, m: int, labels: set[int], check_chunks: bool, report: VerifyReport,
                modalities: tuple[str, ...]) -> None:
    where = f"case '{case}'"
    problems = report.problems
    try:
        case_info(case, f["cases"][case], m)  # datasets, dtypes, shapes, attributes, crop box
    except Corrupt as exc:
        problems.append(f"{where}: {exc}")
        return
    g = f["cases"][case]
    image, label = g["image"], g["label"]
    for ds in (image, label):
        if not ds.fletcher32 or ds.chunks is None:
            problems.append(f"{where}: {ds.name.rsplit('/', 1)[-1]} lacks chunking or Fletcher32 checksums")
    fg = g["foreground"][()]  # inside the volume (case_info)
    if not check_chunks:
        return
    try:
        img, n_img = _read_all(image)
        lab, n_lab = _read_all(label)
    except OSError as exc:
        problems.append(f"{where}: corrupted chunk ({' '.join(str(exc).split())[:160]})")
        return
    report.chunks_read += n_img + n_lab
    bad = [modalities[c] for c in range(m) if not np.isfinite(img[c]).all()]
    if bad:
        problems.append(f"{where}: image holds NaN or Inf voxels in modality {', '.join(bad)}")
    wrong = sorted(set(np.unique(lab).tolist()) - labels)
    if wrong:
        problems.append(f"{where}: label values {wrong} outside the label map")
    if len(fg) and not (lab[tuple(fg.T)] > 0).all():
        problems.append(f"{where}: foreground samples are not on foreground voxels")


def verify_cache(path: str | os.PathLike[str], *, check_chunks: bool = True, check_sources: bool = False,
                 source_root: str | os.PathLike[str] | None = None) -> VerifyReport:
    """Verify a cache; raises CacheError naming the first problem (and how many more). Returns what was checked.

    ``check_sources`` re-hashes every source file (under ``source_root``, default: the root stored at build
    time) and fails if one changed or vanished since the build.
    """
    path = Path(path)
    report = VerifyReport(path=path)
    if is_temporary(path):
        raise CacheError(f"{path}: temporary file of an unfinished build, not a cache")
    if not path.is_file():
        raise CacheError(f"{path}: cache file not found")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise CacheError(f"{path}: not a readable HDF5 file (truncated or corrupted?): {exc}") from None
    try:
        with f:
            sources, root = _verify_open(f, path, report, check_chunks, source_root)
    except Corrupt as exc:
        raise CacheError(f"{path}: the cache's metadata is corrupted: {exc}; rebuild it") from None
    except _CORRUPT as exc:
        raise CacheError(f"{path}: the cache's metadata is corrupted ({' '.join(str(exc).split())[:160]}); "
                         "rebuild it") from None
    if check_sources:
        if not sources:
            report.problems.append("no source files recorded (synthetic cache?); cannot check sources")
        for s in sources:
            src = root / s["path"]
            if not src.is_file():
                report.problems.append(f"source {src} (case {s['case']}) is missing")
            elif file_digest(src) != (s["size"], s["sha256"]):
                report.problems.append(f"source {src} (case {s['case']}) changed since the cache was built")
            report.sources_checked += 1
    report.raise_if_bad()
    return report


#: what h5py and JSON / text decoding raise on damaged metadata
_CORRUPT = (OSError, RuntimeError, KeyError, ValueError, TypeError, UnicodeDecodeError)


def _verify_open(f: h5py.File, path: Path, report: VerifyReport, check_chunks: bool,
                 source_root: str | os.PathLike[str] | None) -> tuple[list[dict], Path]:
    """The checks on the open file; returns the recorded sources and their root."""
    attrs = f.attrs
    if attrs.get("prism_format") != FORMAT_NAME:
        raise CacheError(f"{path}: not a prism cache (no prism_format attribute)")
    version = format_version(attrs)
    if version not in READABLE_VERSIONS:
        raise CacheError(f"{path}: cache format version {version} cannot be read by this prism "
                         f"(reads {sorted(READABLE_VERSIONS)}); rebuild it with prism-data")
    missing = [a for a in ROOT_ATTRS if a not in attrs]
    if missing:
        raise CacheError(f"{path}: root attributes missing: {missing}")
    check_groups(f)
    if not is_complete(attrs) or "cases" not in f or "splits" not in f:
        raise CacheError(f"{path}: cache is incomplete (its build was interrupted); rebuild it")
    try:
        root = root_info(attrs)
    except Corrupt as exc:
        raise CacheError(f"{path}: provenance is not valid JSON of the cache format: {exc}") from None
    modalities, labels, preprocessing = root.modalities, set(root.labels), root.preprocessing
    try:
        sources = read_sources(f, SOURCES_PATH)
    except Corrupt as exc:
        raise CacheError(f"{path}: provenance is not valid JSON of the cache format: {exc}") from None
    if settings_hash(preprocessing) != str(attrs["preprocessing_hash"]):
        report.problems.append("preprocessing_hash does not match the stored preprocessing settings")
    cases = sorted(f["cases"].keys())
    report.cases = len(cases)
    for case in cases:
        try:
            _check_case(f, case, len(modalities), labels, check_chunks, report, modalities)
        except _CORRUPT as exc:
            report.problems.append(f"case '{case}': metadata is corrupted ({' '.join(str(exc).split())[:160]})")
    known = set(cases)
    for name, members in read_splits(f).items():
        if set(members) - known:
            report.problems.append(f"split '{name}' names unknown cases {sorted(set(members) - known)[:3]}")
    source_cases = {s.get("case") for s in sources}
    if sources and source_cases - known:
        report.problems.append(f"provenance lists sources of unknown cases {sorted(source_cases - known)[:3]}")
    root = Path(source_root) if source_root is not None else Path(str(attrs.get("source_root", "")))
    return sources, root
