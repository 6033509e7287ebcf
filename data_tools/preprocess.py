"""Raw NIfTI cases -> a prism cache: crop to the brain, z-score over brain voxels, map labels, keep geometry.

Cases are preprocessed in parallel worker processes (``forkserver``/``spawn``, never a fork of a process holding
HDF5 handles); the parent writes them into a temporary cache renamed into place at the end, so an interrupted
build leaves no cache. Rebuilding is cheap to skip: when the existing cache verifies and was built from the same
settings and the same source files (size and SHA-256), ``build_cache`` returns without writing.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from prism.atomic import remove_stale_temporaries
from prism.data.availability import (
    draw_availability,
    file_sha256,
    parse_missing_rates,
    read_csv_rows,
    read_passion_csv,
)
from prism.data.cache_format import DEFAULT_CHUNK, FOREGROUND_SAMPLES, settings_hash
from prism.data.cache_writer import CacheWriter
from prism.data.splits import make_splits, resolve_case_names, splits_from_lists
from prism.data.verify import file_digest
from prism.errors import CacheError, DataError

from .layouts import DatasetLayout, RawCase, discover_cases
from .resample import resample_image, resample_labels, resampled_shape


@dataclass(frozen=True)
class PreprocessSettings:
    """What preprocessing does (hashed into the cache provenance)."""

    min_size: int = 128  # crop box at least this many voxels per axis (RFNet), clipped to the volume
    margin: int = 0  # voxels added around the brain bounding box
    seed: int = 0  # foreground samples, random splits, drawn availability
    chunk: int | tuple[int, int, int] = DEFAULT_CHUNK  # one edge, or three (0: the whole axis, in parts <= 192)
    test_fraction: float = 0.2
    val_fraction: float = 0.0
    split_lists: dict[str, str] = field(default_factory=dict)  # split name -> case list file
    availability_csv: str = ""  # PASSION split CSV (applies to the cases it names)
    missing_rates: str = ""  # "mr2468" or "flair=0.6,..." (applies to the train split)
    unlisted: str = "error"  # train cases absent from availability_csv: "error", or "full" (every file they have)
    spacing: tuple[float, float, float] | None = None  # resample to this voxel size (mm); None: keep each case's


@dataclass
class PreprocessedCase:
    case_id: str
    image: np.ndarray
    label: np.ndarray
    present: tuple[bool, ...]
    spacing: tuple[float, float, float]
    affine: np.ndarray
    crop_box: np.ndarray
    original_shape: tuple[int, int, int]
    foreground: np.ndarray
    sources: list[dict[str, Any]]
    original_spacing: tuple[float, float, float] | None = None  # the source spacing when resampled to ``spacing``


def _load(path: Path, case_id: str, role: str = "") -> tuple[np.ndarray, np.ndarray, tuple[float, float, float], Any]:
    """(data float32 [D, H, W], affine, voxel sizes, nibabel header) of one NIfTI file (``role``: its modality or
    "label", named in errors); one-line errors."""
    import nibabel as nib

    try:
        img = nib.load(str(path))
        data = np.asarray(img.dataobj, dtype=np.float32)
    except Exception as exc:  # nibabel raises many types for bad files (ImageFileError, EOFError, zlib.error)
        raise DataError(f"case {case_id}: cannot read {path}: {type(exc).__name__}: {exc}") from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise DataError(f"case {case_id}: {path} is not a 3D volume (shape {data.shape})")
    what = f"{role} file {path}" if role else str(path)
    if not np.isfinite(data).all():
        raise DataError(f"case {case_id}: {what} contains NaN or Inf voxels")
    zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
    if not all(np.isfinite(z) and z > 0 for z in zooms):
        raise DataError(f"case {case_id}: {what} has voxel spacing {list(zooms)}; every spacing must be positive "
                        "(fix the NIfTI header's pixdim)")
    affine = np.asarray(img.affine, dtype=np.float64)
    if not np.isfinite(affine).all():
        raise DataError(f"case {case_id}: {what} has a non-finite affine")
    return data, affine, zooms, img.header


def brain_box(brain: np.ndarray, min_size: int | Sequence[int], margin: int) -> np.ndarray:
    """``[3, 2]`` start/stop of the brain's bounding box, grown by ``margin`` and to ``min_size`` (one size, or one
    per axis), inside the volume."""
    coords = np.argwhere(brain)
    box = np.zeros((3, 2), np.int64)
    sizes = (min_size,) * 3 if isinstance(min_size, int | np.integer) else tuple(min_size)
    for ax, n in enumerate(brain.shape):
        lo, hi = int(coords[:, ax].min()) - margin, int(coords[:, ax].max()) + 1 + margin
        lo, hi = max(lo, 0), min(hi, n)
        want = min(int(sizes[ax]), n)
        if hi - lo < want:
            extra = want - (hi - lo)
            lo = max(0, lo - extra // 2)
            hi = lo + want
            if hi > n:
                hi, lo = n, n - want
        box[ax] = (lo, hi)
    return box


@dataclass(frozen=True)
class _Reference:
    """The first file read for a case: every other file must match its shape and affine."""

    path: Path
    shape: tuple[int, ...]
    affine: np.ndarray
    zooms: tuple[float, float, float]
    header: Any


def _load_volumes(case_id: str, files: Sequence[tuple[str, Path | None]]) -> tuple[dict[str, np.ndarray], _Reference]:
    """Read each (role, path) (None = absent); all must share the first file's shape and affine."""
    volumes: dict[str, np.ndarray] = {}
    ref: _Reference | None = None
    for role, path in files:
        if path is None:
            continue
        data, affine, zooms, header = _load(path, case_id, role)
        if ref is None:
            ref = _Reference(path, data.shape, affine, zooms, header)
        elif data.shape != ref.shape:
            raise DataError(f"case {case_id}: {path.name} has shape {data.shape}, {ref.path.name} has {ref.shape}")
        elif not np.allclose(affine, ref.affine, atol=1e-3):
            raise DataError(f"case {case_id}: {path.name} and {ref.path.name} have different affines")
        volumes[role] = data
    if ref is None:
        raise DataError(f"case {case_id}: no modality file")
    return volumes, ref


def _crop_and_normalise(case_id: str, volumes: Mapping[str, np.ndarray], modalities: Sequence[str],
                        ref: _Reference, settings: PreprocessSettings
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Crop the modalities to the brain box and z-score each over brain voxels (any modality non-zero).

    With ``settings.spacing`` the crop is at least ``min_size`` voxels of the target spacing per axis.

    Returns (image float32 ``[M, d, h, w]`` in ``modalities`` order, zeros for absent ones; crop box ``[3, 2]``;
    the brain mask ``[d, h, w]`` of the crop).
    """
    brain = np.zeros(ref.shape, bool)
    for data in volumes.values():
        brain |= data != 0
    if not brain.any():
        raise DataError(f"case {case_id}: every modality is all zero (no brain voxels)")
    min_size: int | list[int] = settings.min_size
    if settings.spacing is not None:  # min_size counts voxels of the target spacing
        min_size = [int(np.ceil(settings.min_size * t / z)) for t, z in zip(settings.spacing, ref.zooms, strict=True)]
    box = brain_box(brain, min_size, settings.margin)
    crop = tuple(slice(int(a), int(b)) for a, b in box)
    brain_c = brain[crop]
    image = np.zeros((len(modalities), *brain_c.shape), np.float32)
    for c, m in enumerate(modalities):
        if m not in volumes:
            continue
        vol = volumes[m][crop]
        vals = vol[brain_c].astype(np.float64)
        std = vals.std()
        image[c][brain_c] = ((vals - vals.mean()) / (std if std > 0 else 1.0)).astype(np.float32)
    return image, box, brain_c


def preprocess_case(raw: RawCase, layout: DatasetLayout, settings: PreprocessSettings,
                    raw_root: str = "") -> PreprocessedCase:
    """Load, check, crop, normalise and relabel one case (runs in a worker process)."""
    case_id = raw.case_id
    volumes, ref = _load_volumes(case_id, [*raw.files.items(), ("label", raw.label)])
    assert raw.label is not None
    shape = ref.shape
    label_raw = volumes.pop("label")
    values = np.unique(label_raw)
    if not np.array_equal(values, np.round(values)):
        raise DataError(f"case {case_id}: {raw.label.name} holds non-integer label values")
    unknown = sorted(set(values.astype(int).tolist()) - set(layout.label_map))
    if unknown:
        raise DataError(f"case {case_id}: {raw.label.name} has label values {unknown} outside the label map "
                        f"{sorted(layout.label_map)}")
    lut = np.zeros(max(layout.label_map) + 1, np.uint8)
    for k, v in layout.label_map.items():
        lut[k] = v
    label = lut[label_raw.astype(np.int64)]
    image, box, brain = _crop_and_normalise(case_id, volumes, layout.modalities, ref, settings)
    crop = tuple(slice(int(a), int(b)) for a, b in box)
    label = np.ascontiguousarray(label[crop])
    spacing = ref.zooms
    if settings.spacing is not None:
        target = resampled_shape(label.shape, ref.zooms, settings.spacing)
        image, label = resample_image(image, target, brain), resample_labels(label, target)
        spacing = tuple(float(s) for s in settings.spacing)
    rng = np.random.default_rng((settings.seed, zlib.crc32(case_id.encode())))
    coords = np.argwhere(label > 0)
    if len(coords) > FOREGROUND_SAMPLES:
        coords = coords[np.sort(rng.choice(len(coords), size=FOREGROUND_SAMPLES, replace=False))]
    sources = []
    for role, path in [*raw.files.items(), ("label", raw.label)]:
        if path is not None:
            size, sha = file_digest(path)
            rel = os.path.relpath(path, raw_root) if raw_root else str(path)
            sources.append({"case": case_id, "role": role, "path": rel, "size": size, "sha256": sha})
    return PreprocessedCase(
        case_id=case_id, image=image, label=label, present=tuple(m in volumes for m in layout.modalities),
        spacing=spacing, affine=ref.affine, crop_box=box, original_shape=tuple(int(s) for s in shape),
        foreground=coords.astype(np.int32), sources=sources,
        original_spacing=ref.zooms if settings.spacing is not None else None)


@dataclass
class PreprocessedImage:
    """A case prepared for prediction (no label needed): the model input and what puts a prediction back."""

    case_id: str
    image: np.ndarray  # float32 [M, d, h, w], cropped, z-scored (and resampled); zeros for absent modalities
    present: tuple[bool, ...]  # per modality (the order given), True = its file was read
    spacing: tuple[float, float, float]  # of the original files
    affine: np.ndarray  # of the original files
    header: Any  # nibabel header of the reference file (the first present modality)
    crop_box: np.ndarray  # [3, 2] start/stop in the original voxel axes
    original_shape: tuple[int, int, int]
    reference: Path  # the file whose header and affine were kept
    image_spacing: tuple[float, float, float] | None = None  # the spacing ``image`` was resampled to (None: not)


def preprocess_image(raw: RawCase, modalities: Sequence[str], settings: PreprocessSettings) -> PreprocessedImage:
    """Load, check, crop and normalise one case's modality files exactly as the cache build does; any label file
    is ignored. ``modalities`` gives the channel order (e.g. the model's); files of other roles are an error."""
    extra = sorted(set(raw.files) - set(modalities))
    if extra:
        raise DataError(f"case {raw.case_id}: modalities {extra} are not among {list(modalities)}")
    volumes, ref = _load_volumes(raw.case_id, list(raw.files.items()))
    image, box, brain = _crop_and_normalise(raw.case_id, volumes, modalities, ref, settings)
    image_spacing = None
    if settings.spacing is not None:
        image = resample_image(image, resampled_shape(brain.shape, ref.zooms, settings.spacing), brain)
        image_spacing = tuple(float(s) for s in settings.spacing)
    return PreprocessedImage(
        case_id=raw.case_id, image=image, present=tuple(m in volumes for m in modalities), spacing=ref.zooms,
        affine=ref.affine, header=ref.header, crop_box=box, original_shape=tuple(int(s) for s in ref.shape),
        reference=ref.path, image_spacing=image_spacing)


def settings_for_inputs(record: Mapping[str, Any]) -> PreprocessSettings:
    """The settings that prepare new cases (no label) as a cache was prepared, from its recorded preprocessing
    (``CacheReader.preprocessing``): crop size, margin and the common spacing, if any. Older records lack keys:
    the defaults apply (no resampling)."""
    defaults = PreprocessSettings()
    spacing = record.get("spacing")
    try:
        return PreprocessSettings(min_size=int(record.get("min_size", defaults.min_size)),
                                  margin=int(record.get("margin", defaults.margin)),
                                  spacing=None if spacing is None else tuple(float(v) for v in spacing))
    except (TypeError, ValueError):
        raise DataError("the cache's recorded preprocessing settings are malformed (min_size, margin, spacing)") \
            from None


def read_sites(path: Path, case_ids: Sequence[str]) -> dict[str, str]:
    """``case,site`` rows from a CSV (header optional); names must be known cases."""
    if not path.is_file():
        return {}
    rows = [r for r in read_csv_rows(path) if r and r[0]]
    if rows and rows[0][0].lower() in ("case", "case_id"):
        rows = rows[1:]
    if any(len(r) < 2 for r in rows):
        raise DataError(f"{path}: every row needs 'case,site'")
    names = resolve_case_names([r[0].strip() for r in rows], case_ids, source=str(path))
    return {name: r[1].strip() for name, r in zip(names, rows, strict=True)}


def plan_splits(case_ids: Sequence[str], settings: PreprocessSettings) -> dict[str, list[str]]:
    if settings.split_lists:
        return splits_from_lists(settings.split_lists, case_ids)
    return make_splits(case_ids, seed=settings.seed, test_fraction=settings.test_fraction,
                       val_fraction=settings.val_fraction)


def plan_availability(case_ids: Sequence[str], splits: Mapping[str, Sequence[str]], layout: DatasetLayout,
                      settings: PreprocessSettings) -> dict[str, tuple[bool, ...]]:
    """Experiment availability per case (before intersecting with the files present); absent = all."""
    out: dict[str, tuple[bool, ...]] = {}
    if settings.availability_csv:
        table = read_passion_csv(settings.availability_csv, layout.modalities)
        names = resolve_case_names(table, case_ids, source=settings.availability_csv)
        out.update({name: table[raw] for name, raw in zip(names, table, strict=True)})
        unlisted = [c for c in splits.get("train", []) if c not in out]
        if unlisted and not settings.missing_rates and settings.unlisted != "full":
            more = f" and {len(unlisted) - 3} more" if len(unlisted) > 3 else ""
            raise DataError(f"{settings.availability_csv}: training cases absent from the CSV: "
                            f"{', '.join(unlisted[:3])}{more}; say what they get: --unlisted full (every modality "
                            "file they have) or --missing-rates (drawn)")
    if settings.missing_rates:
        rates = parse_missing_rates(settings.missing_rates, layout.modalities)
        train = [c for c in splits.get("train", []) if c not in out]
        out.update(draw_availability(train, rates, layout.modalities, seed=settings.seed))
    return out


def describe_settings(layout: DatasetLayout, settings: PreprocessSettings) -> dict[str, Any]:
    """What the cache's provenance records (and its ``preprocessing_hash`` covers). The availability CSV enters
    by name and content hash, so editing it in place rebuilds the cache."""
    if settings.unlisted not in ("error", "full"):
        raise DataError(f"--unlisted: must be 'error' or 'full', got {settings.unlisted!r}")
    described = {"layout": layout.describe(), **asdict(settings),
                 "split_lists": {k: Path(v).name for k, v in settings.split_lists.items()},
                 "availability_csv": Path(settings.availability_csv).name if settings.availability_csv else ""}
    if settings.availability_csv:
        described["availability_csv_sha256"] = file_sha256(settings.availability_csv)
    else:
        del described["unlisted"]  # caches built without a CSV keep the hash they had
    if settings.spacing is None:
        del described["spacing"]  # nor does a cache that keeps each case's spacing
    return described


def _pool(workers: int) -> cf.Executor:
    method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
    return cf.ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context(method))


def _same_sources(output: Path, want_hash: str, raw: list[RawCase], raw_root: Path) -> bool:
    from prism.data.cache_reader import CacheReader
    from prism.data.verify import verify_cache

    try:
        verify_cache(output, check_chunks=False)
        reader = CacheReader(output)
        stored, stored_hash = reader.sources, reader.preprocessing_hash
        reader.close()
    except CacheError:
        return False
    if stored_hash != want_hash:
        return False
    current = {os.path.relpath(p, raw_root) for c in raw for p in [*c.files.values(), c.label] if p is not None}
    if current != {s["path"] for s in stored}:
        return False
    return all(file_digest(raw_root / s["path"]) == (s["size"], s["sha256"]) for s in stored)


def build_cache(raw_root: str | Path, output: str | Path, layout: DatasetLayout,
                settings: PreprocessSettings = PreprocessSettings(), *, workers: int = 1, force: bool = False,
                progress: Callable[[int, int, str], None] | None = None) -> str:
    """Preprocess every case under ``raw_root`` into ``output``. Returns "built" or "up-to-date".

    ``progress(done, total, case_id)`` is called after each case is written.
    """
    raw_root = Path(raw_root).resolve()
    output = Path(output)
    if output.is_dir():
        raise DataError(f"{output}: the output must be a cache file (.h5), not a folder")
    raw = discover_cases(raw_root, layout)
    case_ids = [c.case_id for c in raw]
    splits = plan_splits(case_ids, settings)
    availability = plan_availability(case_ids, splits, layout, settings)
    sites = read_sites(raw_root / layout.site_file, case_ids)
    described = describe_settings(layout, settings)
    if not force and output.exists() and _same_sources(output, settings_hash(described), raw, raw_root):
        return "up-to-date"
    remove_stale_temporaries(output.parent, output.name)  # only those whose writer is dead
    with CacheWriter(output, modalities=layout.modalities, labels=layout.labels, label_map=layout.label_map,
                     preprocessing=described, source_root=str(raw_root), chunk=settings.chunk,
                     seed=settings.seed) as writer:

        def write(case: PreprocessedCase) -> None:
            wanted = availability.get(case.case_id, (True,) * len(case.present))
            avail = tuple(p and w for p, w in zip(case.present, wanted, strict=True))
            if not any(avail):
                raise DataError(f"case {case.case_id}: no modality left available (files present "
                                f"{list(case.present)}, requested {list(wanted)})")
            writer.add_case(case.case_id, case.image, case.label, availability=avail, present=case.present,
                            spacing=case.spacing, affine=case.affine, crop_box=case.crop_box,
                            original_shape=case.original_shape, site=sites.get(case.case_id, ""),
                            foreground=case.foreground, original_spacing=case.original_spacing)
            writer.add_sources(case.sources)

        done = 0
        if workers <= 1:
            for rc in raw:
                write(preprocess_case(rc, layout, settings, str(raw_root)))
                done += 1
                if progress:
                    progress(done, len(raw), rc.case_id)
        else:
            with _pool(workers) as pool:
                pending: set[cf.Future[PreprocessedCase]] = set()
                queue = list(raw)
                try:
                    while queue or pending:
                        while queue and len(pending) < 2 * workers:  # bound the memory held by results
                            pending.add(pool.submit(preprocess_case, queue.pop(0), layout, settings, str(raw_root)))
                        finished, pending = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
                        for fut in finished:
                            case = fut.result()
                            write(case)
                            done += 1
                            if progress:
                                progress(done, len(raw), case.case_id)
                except BaseException:
                    for fut in pending:
                        fut.cancel()
                    raise
        for name, members in splits.items():
            writer.set_split(name, members)
    return "built"
