"""NIfTI in and out for prediction: find the cases to predict (no label file needed), check their geometry before
anything is written, and put a predicted label map back into the original space of its inputs.

"Original space" means: the prediction, made on the brain crop (resampled back to the source spacing when the
model's data was resampled to a common one), is pasted into a zero volume of the original shape at the crop box
(in the original NIfTI voxel axes), stored labels are mapped back to the dataset's raw values (BraTS 2018-2021:
3 -> 4), and the file carries the affine and header of the case's first modality file,
so viewers (nibabel, ITK-SNAP, 3D Slicer) overlay it on the inputs.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from prism.atomic import write_atomic
from prism.errors import DataError

from .layouts import (
    BUILTIN_LAYOUTS,
    DESCRIPTION_NAMES,
    DatasetLayout,
    RawCase,
    case_folders,
    discover_cases,
    find_file,
    layout_from_description,
    resolve_layout,
)
from .preprocess import PreprocessedImage
from .resample import resample_to_shape

_NIFTI = (".nii.gz", ".nii")


def layout_from_record(record: Mapping[str, Any], label_map: Mapping[int, int] | None = None) -> DatasetLayout:
    """Rebuild a layout from ``DatasetLayout.describe()`` (as stored in a cache's preprocessing settings);
    ``label_map`` (the cache's own attribute) replaces the recorded one when given."""
    try:
        files = {str(m): tuple(p) for m, p in record["files"].items()}
        labels = {int(k): str(v) for k, v in record["labels"].items()}
        mapping = label_map if label_map else record["label_map"]
        return DatasetLayout(name=str(record["name"]), files=files, label=tuple(record["label"]), labels=labels,
                             label_map={int(k): int(v) for k, v in mapping.items()})
    except (KeyError, TypeError, ValueError, AttributeError):
        raise DataError("the cache's recorded dataset layout is malformed") from None


def _holds_nifti(folder: Path) -> bool:
    return any(p.is_file() and p.name.endswith(_NIFTI) for p in folder.iterdir())


def input_case_folders(input_dir: Path) -> list[Path]:
    """The folder itself when it holds NIfTI files (one case), else its case folders (as for preprocessing)."""
    if not input_dir.is_dir():
        raise DataError(f"{input_dir}: input folder not found")
    if _holds_nifti(input_dir):
        return [input_dir]
    try:
        return case_folders(input_dir)
    except DataError:
        raise DataError(f"{input_dir}: no case folders or NIfTI files found") from None


def _matches(layout: DatasetLayout, folders: Sequence[Path]) -> bool:
    return any(find_file(f, f.name, pats) is not None for f in folders for pats in layout.files.values())


def resolve_input_layout(spec: str, input_dir: Path, recorded: DatasetLayout | None = None) -> DatasetLayout:
    """The layout to read ``input_dir`` with. ``auto``: a dataset description in the folder, else the layout the
    model's data was built with (``recorded``) when its file names are found, else BraTS naming detected.
    A built-in name or a description file path is used as given."""
    if spec != "auto":
        return resolve_layout(spec, input_dir)
    folders = input_case_folders(input_dir)
    for root in {input_dir, folders[0].parent}:
        for name in DESCRIPTION_NAMES:
            if (root / name).is_file():
                return layout_from_description(root / name)
    if recorded is not None and _matches(recorded, folders):
        return recorded
    for layout in BUILTIN_LAYOUTS.values():
        if _matches(layout, folders):
            return layout
    raise DataError(f"{input_dir}: cannot tell the file naming (no BraTS file names, no prism-dataset.yaml); "
                    "pass --layout")


def discover_input_cases(input_dir: Path, layout: DatasetLayout) -> list[RawCase]:
    """Every case to predict: its modality files (None = absent); a label file, if any, is ignored."""
    return discover_cases(input_dir, layout, require_label=False, folders=input_case_folders(input_dir))


def check_input_geometry(case: RawCase) -> None:
    """Headers only (cheap): each file opens, is 3D, and all share one shape and affine; else a one-line error."""
    import nibabel as nib

    ref: tuple[Path, tuple[int, ...], np.ndarray] | None = None
    for path in (p for p in case.files.values() if p is not None):
        try:
            img = nib.load(str(path))
        except Exception as exc:  # nibabel raises many types for bad files
            raise DataError(f"case {case.case_id}: cannot read {path}: {type(exc).__name__}: {exc}") from None
        shape = tuple(int(s) for s in img.shape)
        if len(shape) == 4 and shape[3] == 1:
            shape = shape[:3]
        if len(shape) != 3:
            raise DataError(f"case {case.case_id}: {path} is not a 3D volume (shape {shape})")
        if ref is None:
            ref = (path, shape, np.asarray(img.affine))
        elif shape != ref[1]:
            raise DataError(f"case {case.case_id}: {path.name} has shape {shape}, {ref[0].name} has {ref[1]}")
        elif not np.allclose(img.affine, ref[2], atol=1e-3):
            raise DataError(f"case {case.case_id}: {path.name} and {ref[0].name} have different affines")


def inverse_label_map(label_map: Mapping[int, int], num_classes: int) -> dict[int, int]:
    """Stored class -> raw value for classes ``0..num_classes-1``. Where several raw values were merged into one
    class, the smallest is written; a class the map does not produce keeps its own value."""
    inverse = {k: k for k in range(num_classes)}
    for raw, stored in sorted(label_map.items(), reverse=True):
        if 0 <= stored < num_classes:
            inverse[int(stored)] = int(raw)
    return inverse


def restore_labels(stored: np.ndarray, inverse: Mapping[int, int]) -> np.ndarray:
    """Map stored classes to raw label values, in the smallest integer type that holds them (uint8 for BraTS)."""
    values = list(inverse.values())
    dtype = next(t for t in (np.uint8, np.int16, np.int32, np.int64)
                 if np.iinfo(t).min <= min(values) and max(values) <= np.iinfo(t).max)
    size = max(max(inverse) + 1, int(stored.max(initial=0)) + 1)
    lut = np.arange(size, dtype=np.int64)
    for k, v in inverse.items():
        lut[k] = v
    return lut[stored.astype(np.int64)].astype(dtype)


def uncrop(cropped: np.ndarray, crop_box: np.ndarray, original_shape: Sequence[int]) -> np.ndarray:
    """Paste ``cropped`` into a zero volume of ``original_shape`` at ``crop_box`` ([3, 2] start/stop)."""
    box = np.asarray(crop_box, dtype=np.int64)
    want = tuple(int(b - a) for a, b in box)
    if tuple(cropped.shape) != want:
        raise DataError(f"prediction of shape {tuple(cropped.shape)} does not fit the crop box {box.tolist()}")
    out = np.zeros(tuple(int(s) for s in original_shape), dtype=cropped.dtype)
    out[tuple(slice(int(a), int(b)) for a, b in box)] = cropped
    return out


def to_crop_grid(volume: np.ndarray, case: PreprocessedImage, *, order: int = 0) -> np.ndarray:
    """A prediction made on ``case.image`` (``[..., d, h, w]``) on the voxel grid of the original crop box: when the
    case was resampled to a common spacing (``prism-data preprocess --spacing``), resampled back (``order`` 0,
    nearest neighbour, for label maps; 1 for probabilities), else returned as it is."""
    crop_shape = tuple(int(b - a) for a, b in np.asarray(case.crop_box))
    if case.image_spacing is None or tuple(volume.shape[-3:]) == crop_shape:
        return volume
    return resample_to_shape(volume, crop_shape, order=order)


def label_map_image(prediction: np.ndarray, case: PreprocessedImage, inverse: Mapping[int, int]) -> Any:
    """A nibabel image of ``prediction`` (stored classes on the model's input grid) in the original space of
    ``case``: resampled back to the source spacing when the case was resampled, original shape, raw label values,
    the reference file's affine and header (data type set to the labels', no scaling)."""
    import nibabel as nib

    data = uncrop(restore_labels(to_crop_grid(prediction, case), inverse), case.crop_box, case.original_shape)
    header = case.header.copy()
    image_class = nib.Nifti2Image if isinstance(header, nib.Nifti2Header) else nib.Nifti1Image
    if not isinstance(header, nib.Nifti1Header):  # e.g. an Analyze header: keep only the geometry
        header = None
    img = image_class(data, case.affine, header=header)  # same affine as the header's: its codes are kept
    img.set_data_dtype(data.dtype)  # integer labels in their own type: saved unscaled
    img.header["cal_min"], img.header["cal_max"] = 0, 0
    return img


def write_label_map(path: str | os.PathLike[str], prediction: np.ndarray, case: PreprocessedImage,
                    inverse: Mapping[int, int]) -> Path:
    """Write :func:`label_map_image` to ``path`` (.nii.gz) atomically (:func:`prism.atomic.write_atomic`).

    Raises:
        StorageError: the disk is full or the folder read-only (no partial file is left)."""
    import nibabel as nib

    path = Path(path)
    img = label_map_image(prediction, case, inverse)
    suffix = ".nii.gz" if path.name.endswith(".nii.gz") else path.suffix
    return write_atomic(path, lambda tmp: nib.save(img, str(tmp)), suffix=suffix)


def write_probabilities(path: str | os.PathLike[str], probabilities: np.ndarray, case: PreprocessedImage,
                        inverse: Mapping[int, int], modalities: Sequence[str]) -> Path:
    """Write class probabilities in the original space of ``case`` as a compressed NumPy file, atomically.

    The file (``numpy.load``, no pickle needed) holds:

    - ``probabilities``: float32 ``[K, X, Y, Z]``, class first, then the voxel axes of the case's NIfTI files (the
      shape of the label map); the crop is undone and every voxel outside it is background (probability 1 for
      class 0). The argmax over the first axis, mapped through ``labels``, is the label map prism-predict writes
      (for a case resampled to a common spacing the label map is resampled back by nearest neighbour and these
      probabilities linearly, so the two may differ by a voxel at boundaries).
    - ``labels``: int64 ``[K]``, the dataset's raw label value of each class (BraTS 2018-2021: 0, 1, 2, 4).
    - ``modalities``: str ``[M_used]``, the modalities the prediction was made from (the case's combination).
    - ``affine``: float64 ``[4, 4]``, the voxel-to-world affine of the case's first modality file.

    Args:
        probabilities: float ``[K, d, h, w]`` on the crop (stored classes ``0..K-1``).
        case: the preprocessed case (crop box, original shape, affine).
        inverse: stored class -> raw label value (:func:`inverse_label_map`).
        modalities: the modalities used.

    Raises:
        StorageError: the disk is full or the folder read-only (no partial file is left).
    """
    # a case resampled to a common spacing goes back to its own grid (linear, as nnU-Net resamples probabilities)
    probs = to_crop_grid(np.asarray(probabilities, dtype=np.float32), case, order=1)
    inside = uncrop(np.ones(probs.shape[1:], np.float32), case.crop_box, case.original_shape)
    full = np.stack([uncrop(p, case.crop_box, case.original_shape) for p in probs])
    full[0] += 1 - inside  # background outside the crop, exactly as the label map's zeros there
    arrays = {"probabilities": full, "labels": np.array([inverse[k] for k in range(len(probs))], np.int64),
              "modalities": np.array(list(modalities), dtype=str), "affine": np.asarray(case.affine, np.float64)}
    return write_atomic(path, lambda tmp: np.savez_compressed(tmp, **arrays), suffix=".npz")
