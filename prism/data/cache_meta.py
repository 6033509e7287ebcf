"""The cache's metadata, read and checked: every root attribute, split and case attribute has the type, shape and
range the format (docs/cache-format.md) gives it, or a :class:`Corrupt` error says which one does not.

The reader runs these checks when it opens a cache, so a hand-edited or damaged file is refused in one line before
anything is trained or written; ``prism-data verify`` runs them too, then reads every chunk.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import h5py
import numpy as np


class Corrupt(ValueError):
    """The metadata does not describe a valid cache; the message names the attribute, dataset or split."""


@dataclass(frozen=True)
class CaseInfo:
    """Per-case metadata stored in the cache."""

    case_id: str
    shape: tuple[int, int, int]
    availability: tuple[bool, ...]
    spacing: tuple[float, float, float]
    affine: np.ndarray
    crop_box: np.ndarray
    original_shape: tuple[int, int, int]
    site: str
    present: tuple[bool, ...] = ()  # modality files that existed in the raw data (availability may be narrower)
    original_spacing: tuple[float, float, float] | None = None  # the source spacing, when resampled to ``spacing``


@dataclass(frozen=True)
class RootInfo:
    """What the root attributes say."""

    modalities: tuple[str, ...]
    labels: dict[int, str]
    label_map: dict[int, int]
    preprocessing: dict[str, Any]


def _json(attrs: Any, name: str, kind: type, default: Any = None) -> Any:
    if name not in attrs:
        if default is None:
            raise Corrupt(f"root attribute '{name}' is missing")
        return default
    raw = attrs[name]
    if isinstance(raw, bytes):
        raw = raw.decode()
    if not isinstance(raw, str):
        raise Corrupt(f"root attribute '{name}' is not JSON text (a {type(raw).__name__})")
    try:
        value = json.loads(raw)
    except ValueError:
        raise Corrupt(f"root attribute '{name}' is not valid JSON") from None
    if not isinstance(value, kind):
        raise Corrupt(f"root attribute '{name}' must be a JSON {kind.__name__}, is {type(value).__name__}")
    return value


def _int_keys(mapping: dict[str, Any], name: str) -> dict[int, Any]:
    try:
        return {int(k): v for k, v in mapping.items()}
    except ValueError:
        raise Corrupt(f"root attribute '{name}' has keys that are not integers") from None


def root_info(attrs: Any) -> RootInfo:
    """Modalities, labels, label map and preprocessing record from the root attributes.

    Raises:
        Corrupt: missing, not JSON, of the wrong JSON type, modalities that are not distinct non-empty names,
            labels that are not 0..K-1 with names, a label map whose keys or values are not integers or whose
            values are not labels.
    """
    modalities = _json(attrs, "modalities", list)
    if not modalities or not all(isinstance(m, str) and m for m in modalities) or len(set(modalities)) != len(
            modalities):
        raise Corrupt("root attribute 'modalities' must list distinct modality names")
    labels = _int_keys(_json(attrs, "labels", dict), "labels")
    if sorted(labels) != list(range(len(labels))) or len(labels) < 2 or not all(
            isinstance(v, str) for v in labels.values()):
        raise Corrupt("root attribute 'labels' must name the labels 0..K-1 (K >= 2)")
    label_map = _int_keys(_json(attrs, "label_map", dict, {}), "label_map")
    if not all(isinstance(v, int) and not isinstance(v, bool) and v in labels for v in label_map.values()):
        raise Corrupt("root attribute 'label_map' must map raw values to labels 0..K-1")
    preprocessing = _json(attrs, "preprocessing", dict, {})
    return RootInfo(tuple(modalities), {k: str(v) for k, v in labels.items()}, label_map, preprocessing)


def format_version(attrs: Any) -> int:
    """The ``format_version`` root attribute (-1 when absent)."""
    raw = attrs.get("format_version", -1)
    if isinstance(raw, bool | np.bool_) or not isinstance(raw, int | np.integer):
        raise Corrupt(f"root attribute 'format_version' is not an integer ({raw!r})")
    return int(raw)


def is_complete(attrs: Any) -> bool:
    """The ``complete`` root attribute, which must be a boolean."""
    raw = attrs.get("complete", False)
    if not isinstance(raw, bool | np.bool_):
        raise Corrupt(f"root attribute 'complete' is not a boolean ({raw!r})")
    return bool(raw)


def check_groups(f: h5py.File) -> None:
    """``/cases`` and ``/splits``, when present, are groups (their absence means an unfinished build)."""
    for name in ("cases", "splits"):
        if name in f and not isinstance(f[name], h5py.Group):
            raise Corrupt(f"'/{name}' is not a group")


def read_sources(f: h5py.File, path: str) -> list[dict[str, Any]]:
    """The provenance record at ``path``: a JSON list of source-file dicts (empty when absent)."""
    if path not in f:
        return []
    raw = f[path][()] if isinstance(f[path], h5py.Dataset) else None
    if isinstance(raw, bytes):
        raw = raw.decode()
    try:
        sources = json.loads(raw) if isinstance(raw, str) else None
    except ValueError:
        sources = None
    if not isinstance(sources, list) or not all(isinstance(s, dict) for s in sources):
        raise Corrupt(f"'/{path}' is not a JSON list of source files")
    return sources


def read_splits(f: h5py.File) -> dict[str, tuple[str, ...]]:
    """Every ``/splits/<name>``: a one-dimensional dataset of case-id strings."""
    out = {}
    for name, ds in f["splits"].items():
        if not isinstance(ds, h5py.Dataset) or ds.ndim != 1 or ds.dtype.kind not in "OSU":
            raise Corrupt(f"split '{name}' is not a list of case ids")
        out[name] = tuple(s.decode() if isinstance(s, bytes) else str(s) for s in ds[()])
    return out


def _attr(a: Any, name: str, shape: tuple[int, ...], kind: str) -> np.ndarray:
    if name not in a:
        raise Corrupt(f"attribute '{name}' is missing")
    value = np.asarray(a[name])
    if value.shape != shape or value.dtype.kind not in kind:
        raise Corrupt(f"attribute '{name}' must be {'x'.join(map(str, shape))} numbers, is "
                      f"{value.dtype} {value.shape}")
    return value


def _spacing(value: np.ndarray, name: str) -> tuple[float, float, float]:
    if not (np.isfinite(value).all() and (value > 0).all()):
        raise Corrupt(f"attribute '{name}' must be three positive sizes, is {value.tolist()}")
    return tuple(float(v) for v in value)


def case_info(case_id: str, g: Any, num_modalities: int) -> CaseInfo:
    """The metadata of ``/cases/<case_id>``, checked against the format and itself.

    Raises:
        Corrupt: not a group; image, label or foreground missing or of the wrong type or shape; an attribute
            missing or of the wrong shape; no modality available; a non-positive spacing; a non-finite affine; a
            crop box outside the original volume or not of the stored size (unless the case was resampled).
    """
    if not isinstance(g, h5py.Group):
        raise Corrupt("not a group")
    for name in ("image", "label", "foreground"):
        if not isinstance(g.get(name), h5py.Dataset):
            raise Corrupt(f"dataset '{name}' is missing")
    image, label, foreground = g["image"], g["label"], g["foreground"]
    if image.ndim != 4 or image.shape[0] != num_modalities or image.dtype != np.float32:
        raise Corrupt(f"image must be float32 [{num_modalities}, D, H, W], is {image.dtype} {image.shape}")
    if label.shape != image.shape[1:] or label.dtype != np.uint8:
        raise Corrupt(f"label must be uint8 {image.shape[1:]}, is {label.dtype} {label.shape}")
    if foreground.ndim != 2 or foreground.shape[1] != 3 or foreground.dtype.kind not in "iu":
        raise Corrupt(f"foreground must be integer [N, 3], is {foreground.dtype} {foreground.shape}")
    points = foreground[()]
    if len(points) and ((points < 0).any() or (points >= np.asarray(image.shape[1:])).any()):
        raise Corrupt(f"foreground points outside the volume {list(image.shape[1:])}")
    a = g.attrs
    m = num_modalities
    availability = _attr(a, "availability", (m,), "biu")
    present = _attr(a, "present", (m,), "biu") if "present" in a else availability
    if not availability.any():
        raise Corrupt("no modality is available")
    spacing = _spacing(_attr(a, "spacing", (3,), "fiu"), "spacing")
    affine = _attr(a, "affine", (4, 4), "fiu")
    if not np.isfinite(affine).all():
        raise Corrupt("attribute 'affine' is not finite")
    box = _attr(a, "crop_box", (3, 2), "iu").astype(np.int64)
    original_shape = _attr(a, "original_shape", (3,), "iu").astype(np.int64)
    original_spacing = None
    if "original_spacing" in a:
        original_spacing = _spacing(_attr(a, "original_spacing", (3,), "fiu"), "original_spacing")
    shape = tuple(int(s) for s in label.shape)
    inside = (box[:, 0] >= 0).all() and (box[:, 0] < box[:, 1]).all() and (box[:, 1] <= original_shape).all()
    sized = original_spacing is not None or tuple(int(v) for v in box[:, 1] - box[:, 0]) == shape
    if not (inside and sized):
        raise Corrupt(f"crop_box {box.tolist()} does not fit the stored shape {list(shape)} inside "
                      f"original_shape {original_shape.tolist()}")
    site = a.get("site", "")
    if isinstance(site, bytes):
        site = site.decode()
    if not isinstance(site, str):
        raise Corrupt("attribute 'site' is not text")
    return CaseInfo(case_id=case_id, shape=shape, availability=tuple(bool(v) for v in availability),
                    spacing=spacing, affine=affine.astype(np.float64), crop_box=box,
                    original_shape=tuple(int(v) for v in original_shape), site=site,
                    present=tuple(bool(v) for v in present), original_spacing=original_spacing)
