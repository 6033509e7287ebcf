"""Resampling to a common spacing (``prism-data preprocess --spacing``) and writing predictions back in the original
space: original shape and affine, label values kept."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from prism.cli.data import main as data_main
from prism.data.cache_reader import CacheReader
from prism.data.verify import verify_cache
from prism.data_tools.layouts import BRATS2020, discover_cases
from prism.data_tools.predict_io import inverse_label_map, label_map_image, write_probabilities
from prism.data_tools.preprocess import PreprocessSettings, preprocess_image, settings_for_inputs
from prism.data_tools.resample import resample_image, resample_labels, resample_to_shape, resampled_shape

SPACING = (1.0, 1.0, 2.0)  # the raw cases: 2 mm along the last voxel axis
SHAPE = (20, 18, 12)


def _affine() -> np.ndarray:
    affine = np.diag([*SPACING, 1.0])
    affine[:3, 3] = (-10.0, 5.0, 30.0)
    return affine


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    """Two BraTS-named cases at 1 x 1 x 2 mm: a brain box with a smooth ramp, labels 1, 2 and 4 in blocks."""
    root = tmp_path_factory.mktemp("aniso")
    rng = np.random.default_rng(0)
    for n in (1, 2):
        case = f"BraTS20_Training_00{n}"
        folder = root / case
        folder.mkdir()
        brain = np.zeros(SHAPE, bool)
        brain[3:17, 2:16, 2:10] = True
        ramp = np.fromfunction(lambda i, j, k: 100 + 3 * i + 2 * j + 5 * k, SHAPE)
        seg = np.zeros(SHAPE, np.int16)
        seg[6:10, 5:9, 3:6], seg[10:13, 5:9, 3:6], seg[8:11, 9:12, 6:8] = 1, 2, 4
        for m in ("flair", "t1ce", "t1", "t2"):
            vol = np.where(brain, ramp + rng.normal(0, 0.01, SHAPE), 0).astype(np.float32)
            nib.save(nib.Nifti1Image(vol, _affine()), folder / f"{case}_{m}.nii.gz")
        nib.save(nib.Nifti1Image(seg, _affine()), folder / f"{case}_seg.nii.gz")
    return root


def test_resampled_shape_keeps_the_extent():
    assert resampled_shape((20, 18, 12), (1, 1, 2), (1, 1, 1)) == (20, 18, 24)
    assert resampled_shape((20, 18, 12), (1, 1, 2), (2, 2, 2)) == (10, 9, 12)
    assert resampled_shape((3, 3, 3), (1, 1, 1), (10, 10, 10)) == (1, 1, 1)


def test_nearest_neighbour_keeps_label_values_and_integer_factors_round_trip():
    rng = np.random.default_rng(1)
    label = rng.choice(np.array([0, 1, 2, 4], np.uint8), size=(6, 5, 4))
    up = resample_labels(label, (12, 5, 12))
    assert set(np.unique(up)) <= {0, 1, 2, 4}
    np.testing.assert_array_equal(up[::2, :, ::3], label)  # each voxel repeated by the factor (grid mode)
    np.testing.assert_array_equal(resample_labels(up, label.shape), label)  # and back exactly


def test_cubic_spline_reproduces_a_linear_ramp_inside_and_zero_background():
    ramp = np.fromfunction(lambda i, j, k: 1 + 0.5 * i - 0.25 * j + 2 * k, (4, 3, 30))
    out = resample_to_shape(ramp[None], (4, 3, 60), order=3)[0]
    # output voxel k sits at input coordinate (k + 0.5) / 2 - 0.5 (grid mode): the ramp evaluated there; a cubic
    # spline reproduces it exactly away from the edges (the edge effect decays by 0.268 per voxel)
    expected = np.fromfunction(lambda i, j, k: 1 + 0.5 * i - 0.25 * j + 2 * ((k + 0.5) / 2 - 0.5), (4, 3, 60))
    np.testing.assert_allclose(out[..., 20:-20], expected[..., 20:-20], atol=1e-4)
    assert np.abs(out - expected).max() > 1e-3  # and the edges are where it is not exact
    brain = np.zeros(ramp.shape, bool)
    brain[1:3, 1:3, 5:25] = True
    image = np.where(brain, ramp, 0)[None].astype(np.float32)
    res = resample_image(image, (4, 3, 60), brain)
    outside = ~resample_labels(brain, (4, 3, 60))
    assert (res[0][outside] == 0).all() and res.dtype == np.float32
    assert (resample_to_shape(image, (4, 3, 60), order=3)[0][outside] != 0).any()  # what the mask removes


def test_preprocess_spacing_resamples_and_predictions_go_back_to_the_original_space(raw, tmp_path, capsys):
    out = tmp_path / "c.h5"
    assert data_main(["preprocess", str(raw), "-o", str(out), "--min-size", "4", "--chunk", "8",
                      "--test-fraction", "0.5", "--spacing", "1", "1", "1"]) == 0
    verify_cache(out)
    reader = CacheReader(out)
    case = "BraTS20_Training_001"
    info = reader.info(case)
    assert info.spacing == (1.0, 1.0, 1.0) and info.original_spacing == SPACING
    box = info.crop_box
    crop_shape = tuple(int(b - a) for a, b in box)
    assert info.shape == (crop_shape[0], crop_shape[1], 2 * crop_shape[2])  # the 2 mm axis doubled
    assert info.original_shape == SHAPE
    np.testing.assert_allclose(info.affine, _affine())
    seg = np.asarray(nib.load(raw / case / f"{case}_seg.nii.gz").dataobj)
    image, label = reader.read_case(case)
    assert set(np.unique(label)) <= {0, 1, 2, 3}  # 4 -> 3, nothing interpolated
    assert reader.preprocessing["spacing"] == [1.0, 1.0, 1.0]
    settings = settings_for_inputs(reader.preprocessing)
    assert settings.spacing == (1.0, 1.0, 1.0)
    reader.close()
    # prism-predict's path: the same preprocessing of the raw files, then the prediction written back
    raw_case = next(c for c in discover_cases(raw, BRATS2020, require_label=False) if c.case_id == case)
    prepared = preprocess_image(raw_case, BRATS2020.modalities, settings)
    np.testing.assert_allclose(prepared.image, image, atol=1e-5)
    written = label_map_image(label, prepared, inverse_label_map(BRATS2020.label_map, 4))
    assert written.shape == SHAPE
    np.testing.assert_allclose(written.affine, _affine())
    assert tuple(float(z) for z in written.header.get_zooms()[:3]) == SPACING
    np.testing.assert_array_equal(np.asarray(written.dataobj), seg)  # labels 1, 2, 4 back where they were
    # --save-probabilities: one-hot probabilities of the same prediction come back on the original grid too
    onehot = np.eye(4, dtype=np.float32)[label].transpose(3, 0, 1, 2)
    saved = np.load(write_probabilities(tmp_path / "p.npz", onehot, prepared, inverse_label_map(BRATS2020.label_map, 4),
                                        BRATS2020.modalities))
    assert saved["probabilities"].shape == (4, *SHAPE)
    np.testing.assert_array_equal(saved["labels"][saved["probabilities"].argmax(0)], seg)


def test_without_spacing_the_settings_hash_and_shape_are_unchanged(raw, tmp_path):
    from prism.data_tools.preprocess import describe_settings

    assert "spacing" not in describe_settings(BRATS2020, PreprocessSettings())
    assert describe_settings(BRATS2020, PreprocessSettings(spacing=(1.0, 1.0, 1.0)))["spacing"] == (1.0, 1.0, 1.0)
