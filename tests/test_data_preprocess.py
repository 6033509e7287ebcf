"""Raw NIfTI folders -> cache: preprocessing values, bad input, verify, interruption, CLI."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest

from prism.cli.data import main as data_main
from prism.data.cache_reader import CacheReader
from prism.data.verify import verify_cache
from prism.data_tools.layouts import BRATS2020, resolve_layout
from prism.data_tools.preprocess import PreprocessSettings, build_cache
from prism.data_tools.synthetic import SynthSettings, write_synthetic_nifti
from prism.errors import CacheError, DataError

SMALL = SynthSettings(cases=3, shape=(14, 16, 12), seed=1, sites=2)
SETTINGS = PreprocessSettings(min_size=8, chunk=8, test_fraction=0.34)


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("raw")
    write_synthetic_nifti(root, SMALL, missing={"BraTS20_Training_002": ["t1ce"]})
    return root


def copy_raw(raw: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(raw, dst)
    return dst


def test_preprocess_crops_normalises_and_relabels(raw, tmp_path):
    out = tmp_path / "c.h5"
    assert build_cache(raw, out, BRATS2020, SETTINGS) == "built"
    r = CacheReader(out)
    case = "BraTS20_Training_001"
    info = r.info(case)
    flair = nib.load(raw / case / f"{case}_flair.nii.gz").get_fdata()
    seg = nib.load(raw / case / f"{case}_seg.nii.gz").get_fdata()
    nz = np.argwhere(flair != 0)
    assert info.original_shape == flair.shape
    np.testing.assert_array_equal(info.crop_box[:, 0], nz.min(0))  # brain box (no min_size growth needed)
    np.testing.assert_array_equal(info.crop_box[:, 1], nz.max(0) + 1)
    img, lab = r.read_case(case)
    crop = tuple(slice(a, b) for a, b in info.crop_box)
    brain = flair[crop] != 0
    expected = (flair[crop][brain] - flair[crop][brain].mean()) / flair[crop][brain].std()
    np.testing.assert_allclose(img[0][brain], expected, rtol=1e-4, atol=1e-4)
    assert (img[0][~brain] == 0).all()
    np.testing.assert_array_equal(lab, np.where(seg[crop] == 4, 3, seg[crop]))  # BraTS 4 -> 3
    assert set(np.unique(seg)) == {0, 1, 2, 4}
    missing = r.info("BraTS20_Training_002")
    assert missing.availability == (True, False, True, True) and missing.present == missing.availability
    assert (r.read_case("BraTS20_Training_002")[0][1] == 0).all()
    assert {r.info(c).site for c in r.case_ids} == {"site0", "site1"}
    assert len(r.sources) == 14 and all(len(s["sha256"]) == 64 for s in r.sources)
    assert r.label_map == {0: 0, 1: 1, 2: 2, 4: 3}
    report = verify_cache(out, check_sources=True)
    assert report.cases == 3 and report.sources_checked == 14 and report.chunks_read > 0


@pytest.mark.slow
def test_parallel_build_equals_serial_and_rebuild_is_skipped(raw, tmp_path):
    a, b = tmp_path / "a.h5", tmp_path / "b.h5"
    build_cache(raw, a, BRATS2020, SETTINGS, workers=1)
    build_cache(raw, b, BRATS2020, SETTINGS, workers=2)
    ra, rb = CacheReader(a), CacheReader(b)
    assert ra.case_ids == rb.case_ids and ra.splits == rb.splits
    for c in ra.case_ids:
        for x, y in zip(ra.read_case(c), rb.read_case(c), strict=True):
            np.testing.assert_array_equal(x, y)
        np.testing.assert_array_equal(ra.foreground(c), rb.foreground(c))
    mtime = b.stat().st_mtime_ns
    assert build_cache(raw, b, BRATS2020, SETTINGS, workers=2) == "up-to-date"
    assert b.stat().st_mtime_ns == mtime
    assert build_cache(raw, b, BRATS2020, PreprocessSettings(min_size=8, chunk=8, seed=9)) == "built"


def test_changed_source_is_caught(raw, tmp_path):
    root = copy_raw(raw, tmp_path / "raw")
    out = tmp_path / "c.h5"
    build_cache(root, out, BRATS2020, SETTINGS)
    f = root / "BraTS20_Training_003" / "BraTS20_Training_003_t2.nii.gz"
    img = nib.load(f)
    data = np.asarray(img.dataobj).copy()
    data[data > 0] += 1
    nib.save(nib.Nifti1Image(data, img.affine), f)
    with pytest.raises(CacheError, match="BraTS20_Training_003_t2.nii.gz \\(case BraTS20_Training_003\\) changed"):
        verify_cache(out, check_sources=True)
    verify_cache(out)  # the cache itself is still sound


def _bad_input(tmp_path, raw, edit):
    root = copy_raw(raw, tmp_path / "raw")
    edit(root)
    out = tmp_path / "c.h5"
    with pytest.raises(DataError) as info:
        build_cache(root, out, BRATS2020, SETTINGS)
    assert not out.exists() and not list(tmp_path.glob(".c.h5.tmp-*"))
    return str(info.value)


def _rewrite(path: Path, fn) -> None:
    img = nib.load(path)
    data, affine = fn(np.asarray(img.dataobj).astype(np.float32), img.affine.copy())
    nib.save(nib.Nifti1Image(data, affine), path)


CASE = "BraTS20_Training_002"


@pytest.mark.parametrize(("edit", "message"), [
    (lambda r: (r / CASE / f"{CASE}_t1.nii.gz").write_bytes(b"not nifti"),
     f"case {CASE}: cannot read .*{CASE}_t1.nii.gz"),
    (lambda r: (r / CASE / f"{CASE}_seg.nii.gz").unlink(), f"case {CASE}: label file {CASE}_seg.nii.gz missing"),
    (lambda r: _rewrite(r / CASE / f"{CASE}_t2.nii.gz", lambda d, a: (d[:-1], a)),
     f"case {CASE}: {CASE}_t2.nii.gz has shape"),
    (lambda r: _rewrite(r / CASE / f"{CASE}_t2.nii.gz", lambda d, a: (d, a * 2)),
     f"case {CASE}: .* different affines"),
    (lambda r: _rewrite(r / CASE / f"{CASE}_flair.nii.gz", lambda d, a: (np.where(d > 0, np.nan, d), a)),
     f"case {CASE}: .*{CASE}_flair.nii.gz contains NaN or Inf"),
    (lambda r: _rewrite(r / CASE / f"{CASE}_seg.nii.gz", lambda d, a: (np.where(d == 4, 7, d), a)),
     f"case {CASE}: {CASE}_seg.nii.gz has label values \\[7\\] outside the label map"),
    (lambda r: (r / "BraTS20_Training_009").mkdir(), "case BraTS20_Training_009: empty case folder"),
])
def test_bad_input_is_one_line_and_writes_nothing(raw, tmp_path, edit, message):
    import re

    msg = _bad_input(tmp_path, raw, edit)
    assert re.search(message, msg) and "\n" not in msg


def test_csv_naming_unknown_cases_is_rejected(raw, tmp_path):
    csv = tmp_path / "split_mr2468.csv"
    csv.write_text('data_name,mask_id,mask,pos_mask_ids\nHG_BraTS20_Training_077,3,"[True, False, False, False]",[3]\n')
    settings = PreprocessSettings(min_size=8, chunk=8, availability_csv=str(csv), unlisted="full")
    with pytest.raises(DataError, match="split_mr2468.csv: names unknown cases: HG_BraTS20_Training_077"):
        build_cache(raw, tmp_path / "c.h5", BRATS2020, settings)
    csv.write_text('data_name,mask_id,mask,pos_mask_ids\nHG_BraTS20_Training_001,3,"[True, False, False, False]",[3]\n')
    build_cache(raw, tmp_path / "c.h5", BRATS2020, settings)
    r = CacheReader(tmp_path / "c.h5")
    info = r.info("BraTS20_Training_001")
    assert info.availability == (True, False, False, False) and info.present == (True,) * 4


def test_corrupted_chunk_and_truncation_fail_verify(raw, tmp_path):
    out = tmp_path / "c.h5"
    build_cache(raw, out, BRATS2020, SETTINGS)
    with h5py.File(out, "r") as f:
        chunk = f["cases/BraTS20_Training_001/image"].id.get_chunk_info(5)
    data = bytearray(out.read_bytes())
    data[chunk.byte_offset + chunk.size // 2] ^= 0xFF
    bad = tmp_path / "bad.h5"
    bad.write_bytes(bytes(data))
    with pytest.raises(CacheError, match="case 'BraTS20_Training_001': corrupted chunk"):
        verify_cache(bad)
    trunc = tmp_path / "trunc.h5"
    trunc.write_bytes(out.read_bytes()[: out.stat().st_size // 2])
    with pytest.raises(CacheError, match="trunc.h5"):
        verify_cache(trunc)


_KILL_SCRIPT = """
import sys, time
from prism.data.cache_writer import CacheWriter
from prism.data_tools.layouts import BRATS2020
from prism.data_tools.preprocess import PreprocessSettings, build_cache
original = CacheWriter.add_case
def slow(self, *a, **k):
    original(self, *a, **k)
    self.file.flush()
    print("case written", flush=True)
    time.sleep(30)
CacheWriter.add_case = slow
build_cache(sys.argv[1], sys.argv[2], BRATS2020, PreprocessSettings(min_size=8, chunk=8))
"""


@pytest.mark.slow
def test_killed_preprocess_leaves_nothing_verify_accepts(raw, tmp_path):
    out = tmp_path / "c.h5"
    proc = subprocess.Popen([sys.executable, "-c", _KILL_SCRIPT, str(raw), str(out)], stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout.readline().strip() == "case written"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    leftovers = list(tmp_path.glob(".c.h5.tmp-*"))
    assert not out.exists() and len(leftovers) == 1
    with pytest.raises(CacheError, match="temporary file of an unfinished build"):
        verify_cache(leftovers[0])
    renamed = tmp_path / "renamed.h5"
    leftovers[0].rename(renamed)
    with pytest.raises(CacheError, match="incomplete"):
        verify_cache(renamed)
    renamed.rename(leftovers[0])
    build_cache(raw, out, BRATS2020, PreprocessSettings(min_size=8, chunk=8))  # the next build cleans up
    assert not list(tmp_path.glob(".c.h5.tmp-*")) and verify_cache(out).cases == 3


def test_layouts_and_cli(raw, tmp_path, capsys):
    assert resolve_layout("auto", raw).name == "brats2020"
    root23 = tmp_path / "raw23"
    write_synthetic_nifti(root23, SynthSettings(cases=2, shape=(10, 10, 10)), layout="brats2023")
    assert resolve_layout("auto", root23).name == "brats2023"
    desc = tmp_path / "desc.yaml"
    desc.write_text('modalities: {a: "{case}-t2f.nii.gz", b: "{case}-t1c.nii.gz"}\nlabel: "{case}-seg.nii.gz"\n'
                    'labels: {0: bg, 1: lesion}\nlabel_map: {0: 0, 1: 1, 2: 1, 3: 1}\n')
    out = tmp_path / "g.h5"
    assert data_main(["preprocess", str(root23), "-o", str(out), "--layout", str(desc), "--min-size", "4",
                      "--test-fraction", "0.5"]) == 0
    r = CacheReader(out)
    assert r.modalities == ("a", "b") and set(np.unique(r.read_case(r.case_ids[0])[1])) <= {0, 1}
    assert data_main(["verify", str(out), "--sources"]) == 0
    assert data_main(["info", str(out), "--json", "--cases"]) == 0
    assert '"source_files": 6' in capsys.readouterr().out
    assert data_main(["verify", str(tmp_path / "none.h5")]) == 2
    assert "prism-data: error:" in capsys.readouterr().err
    assert data_main(["preprocess", str(tmp_path / "nothing"), "-o", str(out)]) == 2


def test_file_digest_is_one_function_with_hashlib_values(tmp_path):
    import hashlib

    from prism.data import verify
    from prism.data_tools import preprocess

    data = bytes(range(256)) * 5000  # more than one 1 MiB block
    path = tmp_path / "blob.bin"
    path.write_bytes(data)
    assert verify.file_digest(path) == (len(data), hashlib.sha256(data).hexdigest())
    assert preprocess.file_digest is verify.file_digest


def test_discover_cases_without_label_and_duplicates(raw, tmp_path):
    from prism.data_tools.layouts import discover_cases
    from prism.data_tools.predict_io import discover_input_cases

    root = copy_raw(raw, tmp_path / "raw")
    case = "BraTS20_Training_001"
    (root / case / f"{case}_seg.nii.gz").unlink()
    with pytest.raises(DataError, match=f"case {case}: label file {case}_seg.nii.gz missing"):
        discover_cases(root, BRATS2020)
    found = discover_cases(root, BRATS2020, require_label=False)
    assert [c.case_id for c in found] == sorted(p.name for p in root.iterdir() if p.is_dir())
    assert all(c.label is None for c in found)
    assert found[1].files["t1ce"] is None and found[0].files["t1ce"].name == f"{case}_t1ce.nii.gz"
    assert [c.case_id for c in discover_input_cases(root, BRATS2020)] == [c.case_id for c in found]
    (root / "HGG").mkdir()
    import shutil

    shutil.copytree(root / case, root / "HGG" / case)
    with pytest.raises(DataError, match=f"case {case}: found twice"):
        discover_input_cases(root, BRATS2020)
