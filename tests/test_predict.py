"""prism-predict: label maps back in the original space (crop, labels, affine, header), any modality subset,
one-line errors that write nothing, and an end-to-end run on NIfTI folders with a 1-step trained run."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from conftest import FAST
from prism.backbone import Backbone
from prism.cli.predict import input_settings, main, predict_folder
from prism.cli.train import main as train_main
from prism.data.cache_reader import CacheReader
from prism.data_tools.layouts import BRATS2020, BRATS2023, discover_cases
from prism.data_tools.predict_io import (
    discover_input_cases,
    inverse_label_map,
    restore_labels,
    uncrop,
    write_label_map,
)
from prism.data_tools.preprocess import PreprocessSettings, build_cache, preprocess_image
from prism.data_tools.synthetic import SynthSettings, write_synthetic_nifti
from prism.outputs import SegOutput
from prism.runs import load_run

SYNTH = SynthSettings(cases=3, shape=(14, 16, 12), seed=1)
SETTINGS = PreprocessSettings(min_size=8, chunk=8, test_fraction=0.34)
MISSING = "BraTS20_Training_002"  # its T1ce file is left out


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    """Raw BraTS 2020 NIfTI cases, the cache built from them, and a run trained on it for one step."""
    root = tmp_path_factory.mktemp("predict")
    raw = root / "raw"
    write_synthetic_nifti(raw, SYNTH, missing={MISSING: ["t1ce"]})
    cache = root / "cache.h5"
    build_cache(raw, cache, BRATS2020, SETTINGS)
    run = root / "run"
    assert train_main([*FAST, f"data.cache={cache}", "train.steps=1", "data.patch_size=[8,8,8]",
                       "train.checkpoint_every=1", "train.log_every=1", "-o", str(run), "--no-eval"]) == 0
    return {"raw": raw, "cache": cache, "run": run, "root": root}


class Oracle(Backbone):
    """Returns the given stored label as one-hot logits; records the masks and images it was given."""

    def __init__(self, label: np.ndarray, modalities: tuple[str, ...], num_classes: int = 4) -> None:
        super().__init__(modalities, num_classes)
        self.label = torch.from_numpy(label.astype(np.int64))
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, image: torch.Tensor, mask: torch.Tensor) -> SegOutput:
        assert tuple(image.shape[2:]) == tuple(self.label.shape)
        self.calls.append((image.clone(), mask.clone()))
        onehot = torch.nn.functional.one_hot(self.label, self.num_classes).permute(3, 0, 1, 2).float()
        return SegOutput(logits=onehot[None].expand(image.shape[0], *onehot.shape))


def raw_seg(folder: Path, layout=BRATS2020) -> np.ndarray:
    return np.asarray(nib.load(folder / layout.label[0].format(case=folder.name)).dataobj)


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("prism-predict: error: "), err
    return err


# ---- the writer and the label-optional preprocessing ----------------------------------------------------------
def test_preprocess_image_gives_the_cache_input(world):
    """The prediction input equals what the cache holds for the case: same crop, same normalisation."""
    reader = CacheReader(world["cache"])
    for raw in discover_cases(world["raw"], BRATS2020):
        case = preprocess_image(raw, reader.modalities, SETTINGS)
        info = reader.info(raw.case_id)
        image, _ = reader.read_case(raw.case_id)
        np.testing.assert_array_equal(case.crop_box, info.crop_box)
        np.testing.assert_allclose(case.image, image, atol=1e-6)
        np.testing.assert_allclose(case.affine, info.affine)
        assert case.original_shape == info.original_shape and case.present == info.present
    reader.close()


def test_writer_round_trip_restores_the_source_label(world, tmp_path):
    """The cached label written back equals the raw segmentation file voxel for voxel (crop undone, 3 -> 4), with
    the source's affine, header codes and voxel sizes, as uint8 without scaling."""
    reader = CacheReader(world["cache"])
    inverse = inverse_label_map(reader.label_map, len(reader.labels))
    assert inverse == {0: 0, 1: 1, 2: 2, 3: 4}
    for raw in discover_cases(world["raw"], BRATS2020):
        case = preprocess_image(raw, reader.modalities, SETTINGS)
        shape = case.original_shape
        assert any(a > 0 or b < n for (a, b), n in zip(case.crop_box, shape, strict=True))  # a real crop
        _, label = reader.read_case(raw.case_id)
        out = write_label_map(tmp_path / f"{raw.case_id}.nii.gz", label, case, inverse)
        img, src = nib.load(out), nib.load(raw.files["flair"])
        data = np.asarray(img.dataobj)
        assert data.dtype == np.uint8 and img.get_data_dtype() == np.uint8
        np.testing.assert_array_equal(data, raw_seg(raw.folder))
        assert 4 in data and 3 not in data
        np.testing.assert_array_equal(img.affine, src.affine)
        for key in ("sform_code", "qform_code", "pixdim", "srow_x", "srow_y", "srow_z", "xyzt_units"):
            np.testing.assert_array_equal(img.header[key], src.header[key])
        assert img.header.get_slope_inter() == (None, None)
    assert not list(tmp_path.glob(".*tmp*"))  # atomic write left no temporary file
    reader.close()


def test_label_map_inversion_and_dtype():
    assert inverse_label_map({0: 0, 255: 1}, 2) == {0: 0, 1: 255}
    assert inverse_label_map({0: 0, 7: 1, 5: 1}, 3) == {0: 0, 1: 5, 2: 2}  # merged values: the smallest; 2 kept
    stored = np.array([[0, 1], [2, 1]], np.uint8)
    out = restore_labels(stored, {0: 0, 1: 1000, 2: 2})
    assert out.dtype == np.int16 and out.tolist() == [[0, 1000], [2, 1000]]
    box = np.array([[1, 3], [0, 2], [2, 3]])
    full = uncrop(np.ones((2, 2, 1), np.uint8), box, (4, 3, 3))
    assert full.sum() == 4 and full[1:3, 0:2, 2].all() and full[0].sum() == 0


# ---- prediction with an oracle model ---------------------------------------------------------------------------
@pytest.mark.parametrize("case_id", ["BraTS20_Training_001", MISSING])
def test_oracle_prediction_equals_the_source_label(world, case_id):
    """Through predict_folder (one case folder as INPUT_DIR): an oracle model's output written to original space
    is the raw segmentation; the model saw exactly the case's modalities (missing T1ce masked and zero)."""
    run = load_run(world["run"])
    folder = world["raw"] / case_id
    raw = discover_input_cases(folder, BRATS2020)[0]
    case = preprocess_image(raw, run.modalities, input_settings(run))
    crop = tuple(slice(int(a), int(b)) for a, b in case.crop_box)
    seg = raw_seg(folder)
    run.model = Oracle(np.where(seg == 4, 3, seg)[crop], run.modalities)
    out = world["root"] / f"oracle-{case_id}"
    written = predict_folder(run, folder, out)
    assert [p.name for p in written] == [f"{case_id}.nii.gz"]
    np.testing.assert_array_equal(np.asarray(nib.load(written[0]).dataobj), seg)
    (image, mask), = run.model.calls
    want = [m != "t1ce" or case_id != MISSING for m in run.modalities]
    assert mask.tolist() == [want]
    assert (image[0, run.modalities.index("t1ce")] == 0).all() == (case_id == MISSING)


def test_brats2023_naming_keeps_et_as_3(world, tmp_path):
    """Inputs named as BraTS 2023+ get that dataset's labels (ET = 3), though the run's data were BraTS 2020."""
    raw23 = tmp_path / "raw23"
    write_synthetic_nifti(raw23, SynthSettings(cases=1, shape=SYNTH.shape, seed=SYNTH.seed), layout="brats2023")
    folder = next(p for p in raw23.iterdir() if p.is_dir())
    run = load_run(world["run"])
    case = preprocess_image(discover_input_cases(raw23, BRATS2023)[0], run.modalities, input_settings(run))
    seg = raw_seg(folder, BRATS2023)
    run.model = Oracle(seg[tuple(slice(int(a), int(b)) for a, b in case.crop_box)], run.modalities)
    (path,) = predict_folder(run, raw23, tmp_path / "out")
    data = np.asarray(nib.load(path).dataobj)
    np.testing.assert_array_equal(data, seg)
    assert 3 in data and 4 not in data


# ---- the command ---------------------------------------------------------------------------------------------
def test_cli_end_to_end(world, tmp_path, capsys):
    out = tmp_path / "pred"
    assert main([str(world["run"]), str(world["raw"]), "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"{MISSING}: " in printed and "(flair, t1, t2)" in printed
    cases = sorted(p.name for p in world["raw"].iterdir() if p.is_dir())
    assert sorted(p.name for p in out.iterdir()) == [f"{c}.nii.gz" for c in cases]
    for c in cases:
        img, src = nib.load(out / f"{c}.nii.gz"), nib.load(world["raw"] / c / f"{c}_t2.nii.gz")
        data = np.asarray(img.dataobj)
        assert data.shape == src.shape and data.dtype == np.uint8
        np.testing.assert_array_equal(img.affine, src.affine)
        assert set(np.unique(data).tolist()) <= {0, 1, 2, 4}
        crop = preprocess_image(discover_input_cases(world["raw"] / c, BRATS2020)[0], BRATS2020.modalities,
                                SETTINGS).crop_box
        inside = np.zeros(data.shape, bool)
        inside[tuple(slice(int(a), int(b)) for a, b in crop)] = True
        assert (data[~inside] == 0).all()


def test_cli_window_option(world, tmp_path, monkeypatch):
    import prism.evaluation.inference as inference

    seen = []
    original = inference.predict_logits

    def spy(*args, **kwargs):
        seen.append(kwargs["options"])
        return original(*args, **kwargs)

    monkeypatch.setattr(inference, "predict_logits", spy)
    out = tmp_path / "pred"
    assert main([str(world["run"]), str(world["raw"] / MISSING), "-o", str(out), "--window", "8", "8", "8",
                 "--overlap", "0.25"]) == 0
    assert (out / f"{MISSING}.nii.gz").is_file()
    assert [(o.window, o.overlap) for o in seen] == [((8, 8, 8), 0.25)]  # the flags over the run's eval section


def _no_checkpoint(world, tmp_path) -> list[str]:
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(world["run"] / "config.yaml", run)
    return [str(run), str(world["raw"])]


def _empty_input(world, tmp_path) -> list[str]:
    (tmp_path / "empty").mkdir()
    return [str(world["run"]), str(tmp_path / "empty")]


def _mismatched_shapes(world, tmp_path) -> list[str]:
    raw = shutil.copytree(world["raw"], tmp_path / "raw")
    case = "BraTS20_Training_003"
    nib.save(nib.Nifti1Image(np.ones((5, 5, 5), np.int16), np.eye(4)), raw / case / f"{case}_t2.nii.gz")
    return [str(world["run"]), str(raw)]


def _moved_cache(world, tmp_path) -> list[str]:
    run = shutil.copytree(world["run"], tmp_path / "run")
    text = (run / "config.yaml").read_text().replace(str(world["cache"]), str(tmp_path / "gone.h5"))
    (run / "config.yaml").write_text(text)
    return [str(run), str(world["raw"])]


@pytest.mark.parametrize(("make", "needle"), [
    (lambda w, t: [str(t / "nope"), str(w["raw"])], "run folder not found"),
    (_no_checkpoint, "last.pt: checkpoint not found"),
    (_empty_input, "no case folders or NIfTI files"),
    (lambda w, t: [str(w["run"]), str(t / "missing")], "input folder not found"),
    (_mismatched_shapes, "BraTS20_Training_003_t2.nii.gz has shape (5, 5, 5)"),
    (_moved_cache, "pass --data CACHE"),
], ids=["no-run", "no-checkpoint", "empty-input", "no-input", "mismatched-shapes", "moved-cache"])
def test_bad_inputs_one_line_error_nothing_written(world, tmp_path, capsys, make, needle):
    args = make(world, tmp_path)
    out = tmp_path / "out"
    assert main([*args, "-o", str(out)]) == 2
    assert needle in _one_line_error(capsys)
    assert not out.exists()


def test_moved_cache_found_with_data_option(world, tmp_path):
    args = _moved_cache(world, tmp_path)
    out = tmp_path / "out"
    assert main([args[0], str(world["raw"] / MISSING), "-o", str(out), "--data", str(world["cache"])]) == 0
    assert (out / f"{MISSING}.nii.gz").is_file()


def test_module_entry_point_error(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "prism.cli.predict", str(tmp_path / "nope"), str(tmp_path),
                           "-o", str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"prism-predict: error: {tmp_path / 'nope'}: run folder not found"]
    assert not (tmp_path / "out").exists()


def test_writer_keeps_oblique_geometry_and_codes(tmp_path):
    """A scaled int16 source with an oblique affine, qform/sform codes 1 and a trailing 4th axis of 1: the label
    map is 3D, unscaled, with the same affine, codes and voxel sizes, and the crop pasted at the right place."""
    from prism.data_tools.layouts import RawCase

    theta = np.deg2rad(10)
    affine = np.array([[-1.2 * np.cos(theta), 0.0, 1.5 * np.sin(theta), 90.0], [0.0, -1.1, 0.0, 120.0],
                       [1.2 * np.sin(theta), 0.0, 1.5 * np.cos(theta), -70.0], [0, 0, 0, 1]])
    vol = np.zeros((10, 9, 8, 1), np.float32)
    vol[2:7, 3:8, 1:5, 0] = np.arange(100, 200).reshape(5, 5, 4)
    src = nib.Nifti1Image(vol, affine)
    src.set_data_dtype(np.int16)
    src.header.set_slope_inter(2.0, 0.0)
    src.set_qform(affine, 1)
    src.set_sform(affine, 1)
    folder = tmp_path / "case"
    folder.mkdir()
    nib.save(src, folder / "case_flair.nii.gz")
    raw = RawCase("case", folder, {"flair": folder / "case_flair.nii.gz", "t1": None}, None)
    case = preprocess_image(raw, ("flair", "t1"), PreprocessSettings(min_size=1))
    np.testing.assert_array_equal(case.crop_box, [[2, 7], [3, 8], [1, 5]])
    assert case.present == (True, False) and (case.image[1] == 0).all()
    pred = np.full((5, 5, 4), 1, np.uint8)
    pred[0] = 3
    out = nib.load(write_label_map(tmp_path / "case.nii.gz", pred, case, {0: 0, 1: 1, 2: 2, 3: 4}))
    data = np.asarray(out.dataobj)
    expect = np.zeros((10, 9, 8), np.uint8)
    expect[2:7, 3:8, 1:5] = 1
    expect[2, 3:8, 1:5] = 4
    np.testing.assert_array_equal(data, expect)
    loaded = nib.load(folder / "case_flair.nii.gz")
    np.testing.assert_allclose(out.affine, loaded.affine, atol=1e-6)
    assert int(out.header["qform_code"]) == 1 and int(out.header["sform_code"]) == 1
    np.testing.assert_allclose(out.header.get_zooms(), loaded.header.get_zooms()[:3], atol=1e-6)
    assert out.header.get_slope_inter() == (None, None) and out.get_data_dtype() == np.uint8


def test_adapt_to_support_cases_first_with_the_runs_rule(world, tmp_path, capsys):
    from prism.cli.predict import adapt_run

    run = load_run(world["run"])
    before = {n: p.detach().clone() for n, p in run.model.named_parameters()}
    seen = []
    original = run.strategy.adapt

    def spy(model, support, loss_fn, *, steps=None, lr=None):
        seen.extend(support)
        return original(model, support, loss_fn, steps=steps, lr=lr)

    run.strategy.adapt = spy
    assert adapt_run(run, world["raw"], steps=2) == 3
    by_case = {b.case_ids[0]: b for b in seen}
    reader = CacheReader(world["cache"])
    for case_id, batch in by_case.items():  # the support label is the cache's (stored values), whole volume
        _, label = reader.read_case(case_id)
        np.testing.assert_array_equal(batch.label[0, : label.shape[0], : label.shape[1], : label.shape[2]].numpy(),
                                      label)
    assert by_case[MISSING].mask[0].tolist() == [m != "t1ce" for m in run.modalities]  # its T1ce is absent
    changed = [n for n, p in run.model.named_parameters() if not torch.equal(p, before[n])]
    assert changed
    checkpoint = torch.load(world["run"] / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(checkpoint[n], before[n]) for n in before)  # the run folder is not changed
    out = tmp_path / "adapted"
    assert main([str(world["run"]), str(world["raw"]), "-o", str(out), "--adapt", str(world["raw"]),
                 "--adapt-steps", "1"]) == 0
    assert "adapted to 3 support case(s)" in capsys.readouterr().out
    assert len(list(out.iterdir())) == 3
    assert main([str(world["run"]), str(world["raw"]), "-o", str(tmp_path / "x"), "--adapt-steps", "1"]) == 2
    assert "--adapt-steps: needs --adapt" in _one_line_error(capsys)
    assert not (tmp_path / "x").exists()


# ---- probabilities and test-time mirroring ---------------------------------------------------------------------
def test_saved_probabilities_match_the_label_map_in_the_original_space(world, tmp_path, capsys):
    """<case>.npz: float32 [K, *original shape]; labels[argmax] is the written label map voxel for voxel; a
    distribution per voxel; background outside the crop; the modalities used and the affine recorded."""
    out = tmp_path / "pred"
    assert main([str(world["run"]), str(world["raw"]), "-o", str(out), "--save-probabilities"]) == 0
    assert "and class probabilities (.npz)" in capsys.readouterr().out
    cases = sorted(p.name for p in world["raw"].iterdir() if p.is_dir())
    assert sorted(p.name for p in out.iterdir()) == sorted([f"{c}.nii.gz" for c in cases] + [f"{c}.npz" for c in cases])
    for c in cases:
        saved = np.load(out / f"{c}.npz")  # no pickle needed
        probs, labels = saved["probabilities"], saved["labels"]
        src = nib.load(world["raw"] / c / f"{c}_flair.nii.gz")
        label_map = np.asarray(nib.load(out / f"{c}.nii.gz").dataobj)
        assert probs.dtype == np.float32 and probs.shape == (4, *src.shape)
        assert labels.tolist() == [0, 1, 2, 4]
        np.testing.assert_array_equal(labels[probs.argmax(0)], label_map)
        np.testing.assert_allclose(probs.sum(0), 1, atol=1e-5)
        assert (probs >= 0).all()
        crop = preprocess_image(discover_input_cases(world["raw"] / c, BRATS2020)[0], BRATS2020.modalities,
                                SETTINGS).crop_box
        outside = np.ones(src.shape, bool)
        outside[tuple(slice(int(a), int(b)) for a, b in crop)] = False
        assert (probs[0][outside] == 1).all() and (probs[1:][:, outside] == 0).all()
        expected = ["flair", "t1", "t2"] if c == MISSING else ["flair", "t1ce", "t1", "t2"]
        assert saved["modalities"].tolist() == expected
        np.testing.assert_array_equal(saved["affine"], src.affine)


def test_tta_flag_reaches_the_predictor_and_defaults_to_the_runs_setting(world, tmp_path, monkeypatch):
    import prism.evaluation.inference as inference

    seen = []
    original = inference.predict_logits

    def spy(*args, **kwargs):
        seen.append(kwargs["options"].tta)
        return original(*args, **kwargs)

    monkeypatch.setattr(inference, "predict_logits", spy)
    case = world["raw"] / MISSING
    assert main([str(world["run"]), str(case), "-o", str(tmp_path / "a"), "--tta", "mirror"]) == 0
    assert main([str(world["run"]), str(case), "-o", str(tmp_path / "b")]) == 0
    assert seen == ["mirror", "none"]
