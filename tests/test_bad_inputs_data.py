"""The data side of the catalogue of mistakes and faults: 100 cases, each exiting with status 2 and one line on
stderr naming the culprit (file, field, flag, case, modality), with nothing that existed before changed.

Covered: storage faults (read-only folders for caches, NIfTI folders and the demo data; ``sys.excepthook`` is never
replaced), PASSION and site CSVs (one case under two spellings, spaces after commas, a byte-order mark, non-UTF-8
text, a field over the csv module's limit), NaN/Inf voxels and zero spacings, broken symbolic links, non-finite and
out-of-range config fields and prism-data flags, a non-UTF-8 config, dataset descriptions with unknown keys, hand-
edited cache metadata (wrong types, missing attributes, inconsistent shapes, bad JSON), and a resume on a cache that
now holds another dataset. The CLIs' ``main(argv)`` run in-process; the working directory is an empty temporary
folder, snapshotted with the cache, the raw data and the trained run.

One case can only be caught once training reads the damaged chunk (NaN voxels inside a cache's image): there the run
folder's own new files may exist, but no checkpoint is written and nothing that existed before changes.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest

from conftest import FAST, tree_state
from prism.cli.data import main as data_main
from prism.cli.predict import main as predict_main
from prism.cli.train import main as train_main
from prism.data_tools.synthetic import SynthSettings, write_synthetic_cache, write_synthetic_nifti

MAINS = {"train": train_main, "data": data_main, "predict": predict_main}
QUICK = [*FAST, "train.steps=1", "train.loggers=[csv]"]
HEADER = "data_name,mask_id,mask,pos_mask_ids\n"
CASE = "BraTS20_Training_001"
ROW1 = 'HG_BraTS20_Training_001,3,"[True, False, False, False]",[3]\n'
ROW2 = 'HG_BraTS20_Training_002,0,"[False, False, False, True]",[0]\n'


@dataclass
class Env:
    """Paths a mistake may use: ``cwd`` (empty, snapshotted), a tiny cache, a trained run, raw NIfTI cases and a
    read-only folder (None where no file system can be mounted)."""

    cwd: Path
    cache: Path
    run: Path
    raw: Path
    readonly: Path | None

    def write(self, name: str, text: str | bytes) -> Path:
        p = self.cwd / name
        p.write_bytes(text if isinstance(text, bytes) else text.encode())
        return p

    def copy_raw(self) -> Path:
        return Path(shutil.copytree(self.raw, self.cwd / "raw"))

    def copy_cache(self) -> Path:
        return Path(shutil.copy(self.cache, self.cwd / "bad.h5"))


@dataclass
class Mistake:
    """``argv(env)`` for CLI ``cli`` must fail with one stderr line matching ``culprit``."""

    id: str
    cli: str
    argv: Callable[[Env], list[str]]
    culprit: str
    setup: Callable[[Env], None] = field(default=lambda env: None)
    needs_mount: bool = False
    env_vars: Callable[[Env], dict[str, str]] = field(default=lambda env: {})
    strict: bool = True  # nothing new on disk either (False: only what existed before is unchanged, no checkpoint)


def M(id_: str, cli: str, argv: Callable[[Env], list[str]] | list[str], culprit: str, setup=None, **kw) -> Mistake:
    fn = argv if callable(argv) else (lambda env, a=tuple(argv): [x.format(cwd=env.cwd, cache=env.cache,
                                                                             raw=env.raw) for x in a])
    return Mistake(id_, cli, fn, culprit, setup or (lambda env: None), **kw)


def train(*extra: str) -> Callable[[Env], list[str]]:
    """prism-train on ``--data`` (default: the tiny cache) into cwd/out."""
    def argv(env: Env) -> list[str]:
        items = [e.format(cache=env.cache, cwd=env.cwd) for e in extra]
        data = [] if "--data" in items else ["--data", str(env.cache)]
        return [*data, "-o", str(env.cwd / "out"), "--no-eval", *QUICK, *items]
    return argv


def on_bad_cache(*extra: str) -> Callable[[Env], list[str]]:
    return train("--data", "{cwd}/bad.h5", *extra)


def preprocess(*extra: str) -> Callable[[Env], list[str]]:
    """prism-data preprocess of cwd/raw (a copy made by the setup) into cwd/c.h5."""
    return lambda env: ["preprocess", str(env.cwd / "raw"), "-o", str(env.cwd / "c.h5"), "--min-size", "8",
                        "--chunk", "8", *[e.format(cwd=env.cwd) for e in extra]]


def pre_flags(*extra: str) -> Callable[[Env], list[str]]:
    """prism-data preprocess of the shared raw folder (flag mistakes are caught before it is read)."""
    return lambda env: ["preprocess", str(env.raw), "-o", str(env.cwd / "c.h5"), *extra]


# ---- setups ----------------------------------------------------------------------------------------------------

def with_raw(edit: Callable[[Path], None] | None = None) -> Callable[[Env], None]:
    def setup(env: Env) -> None:
        root = env.copy_raw()
        if edit is not None:
            edit(root)
    return setup


def with_csv(content: str | bytes) -> Callable[[Env], None]:
    def setup(env: Env) -> None:
        env.copy_raw()
        env.write("avail.csv", content)
    return setup


def _volume(root: Path, role: str, edit: Callable[[np.ndarray], np.ndarray], zooms=None) -> None:
    path = root / CASE / f"{CASE}_{role}.nii.gz"
    img = nib.load(path)
    data = edit(np.asarray(img.dataobj).astype(np.float32))
    out = nib.Nifti1Image(data, img.affine)
    if zooms is not None:  # nibabel itself turns a zero pixdim into 1 when loading; a NaN stays
        out.header["pixdim"][1:4] = zooms
    nib.save(out, path)


def _set(array: np.ndarray, value: float) -> np.ndarray:
    array[array.shape[0] // 2, array.shape[1] // 2, array.shape[2] // 2] = value
    return array


def _dangling(root: Path) -> None:
    target = root / CASE / f"{CASE}_t2.nii.gz"
    target.unlink()
    target.symlink_to(root / CASE / "gone.nii.gz")


def _loop(root: Path) -> None:
    target = root / CASE / f"{CASE}_t2.nii.gz"
    target.unlink()
    other = root / CASE / "other.nii.gz"
    other.symlink_to(target)
    target.symlink_to(other)


def _sites(text: str | bytes) -> Callable[[Path], None]:
    def edit(root: Path) -> None:
        (root / "sites.csv").write_bytes(text if isinstance(text, bytes) else text.encode())
    return edit


def _description(text: str) -> Callable[[Path], None]:
    def edit(root: Path) -> None:
        (root / "prism-dataset.yaml").write_text(text)
    return edit


DESCRIPTION = 'modalities: {flair: "{case}_flair.nii.gz", t1: "{case}_t1.nii.gz"}\nlabel: "{case}_seg.nii.gz"\n'


def corrupt(edit: Callable[[h5py.File], None]) -> Callable[[Env], None]:
    """A copy of the tiny cache at cwd/bad.h5, hand-edited with h5py."""
    def setup(env: Env) -> None:
        with h5py.File(env.copy_cache(), "r+") as f:
            edit(f)
    return setup


C0 = "cases/synth_0000"


def root_attr(name: str, value) -> Callable[[h5py.File], None]:
    def edit(f: h5py.File) -> None:
        if value is None:
            del f.attrs[name]
        else:
            f.attrs[name] = value
    return edit


def case_attr(name: str, value) -> Callable[[h5py.File], None]:
    def edit(f: h5py.File) -> None:
        if value is None:
            del f[C0].attrs[name]
        else:
            f[C0].attrs[name] = value
    return edit


def replace_dataset(path: str, make: Callable[[h5py.Dataset], np.ndarray]) -> Callable[[h5py.File], None]:
    def edit(f: h5py.File) -> None:
        data = make(f[path])
        del f[path]
        f[path] = data
    return edit


def _case_as_dataset(f: h5py.File) -> None:
    del f[C0]
    f[C0] = np.zeros(3)


def _bad_sources(f: h5py.File) -> None:
    del f["provenance/sources"]
    f.create_dataset("provenance/sources", data="[{", dtype=h5py.string_dtype())


def _splits_as_dataset(f: h5py.File) -> None:
    del f["splits"]
    f["splits"] = np.zeros(3)


def _nan_voxel(f: h5py.File) -> None:
    image = f[f"{C0}/image"]
    block = image[1, :, :, :]
    block[4, 4, 4] = np.nan
    image[1, :, :, :] = block


def _other_dataset(env: Env) -> None:
    """A copy of the trained run whose cache (cwd/c.h5, the run was trained on it) is then rebuilt from other data."""
    run = Path(shutil.copytree(env.run, env.cwd / "run"))
    shutil.copy(env.run.parent / "run_cache.h5", env.cwd / "c.h5")
    config = run / "config.yaml"
    config.write_text(re.sub(r"cache: .*", f"cache: {env.cwd / 'c.h5'}", config.read_text(), count=1))
    write_synthetic_cache(str(env.cwd / "c.h5"), SynthSettings(cases=6, shape=(24, 24, 24), seed=11),
                          test_fraction=0.34)


def _nan_training_cache(env: Env) -> None:
    """A cache whose every training case holds a NaN in its T1ce image, so the first batch meets one."""
    with h5py.File(env.copy_cache(), "r+") as f:
        for name in f["splits/train"][()]:
            image = f[f"cases/{name.decode()}/image"]
            block = image[1]
            block[...] = np.nan
            image[1] = block


PRE = ("preprocess", "{raw}", "-o", "{cwd}/c.h5", "--min-size", "8", "--chunk", "8")

CATALOGUE: list[Mistake] = [
    # ---- storage faults (a read-only mount) -------------------------------------------------------------------
    M("synth-into-read-only-folder", "data", lambda env: ["synth", "-o", str(env.readonly / "s.h5"), "--cases", "2",
                                                          "--shape", "8", "8", "8"],
      r"s\.h5: cannot write the cache: read-only file system", needs_mount=True),
    M("synth-nifti-into-read-only-mount", "data", lambda env: ["synth", "--nifti", "-o", str(env.readonly / "new"),
                                                               "--cases", "2", "--shape", "8", "8", "8"],
      r"new: cannot write the NIfTI folder: read-only file system", needs_mount=True),
    M("preprocess-into-read-only-folder", "data",
      lambda env: ["preprocess", str(env.raw), "-o", str(env.readonly / "c.h5"), "--min-size", "8", "--chunk", "8"],
      r"c\.h5: cannot write the cache: read-only file system", needs_mount=True),
    M("demo-data-in-read-only-cache-dir", "train", lambda env: ["-o", str(env.cwd / "out"), "--no-eval", *QUICK],
      r"cannot write the built-in demo data there: read-only file system; set PRISM_CACHE_DIR", needs_mount=True,
      env_vars=lambda env: {"PRISM_CACHE_DIR": str(env.readonly)}),
    M("demo-data-under-read-only-cache-dir", "train", lambda env: ["-o", str(env.cwd / "out"), "--no-eval", *QUICK],
      r"/sub: cannot write the built-in demo data there: read-only file system", needs_mount=True,
      env_vars=lambda env: {"PRISM_CACHE_DIR": str(env.readonly / "sub")}),
    # ---- PASSION availability CSVs ------------------------------------------------------------------------------
    M("csv-two-spellings-prefix", "data", preprocess("--availability-csv", "{cwd}/avail.csv"),
      r"avail\.csv:3: case BraTS20_Training_001 is listed twice: also on line 2 \(as HG_BraTS20_Training_001\)",
      with_csv(HEADER + ROW1 + 'BraTS20_Training_001,3,"[True, False, False, False]",[3]\n')),
    M("csv-two-spellings-grades", "data", preprocess("--availability-csv", "{cwd}/avail.csv"),
      r"avail\.csv:3: case LG_BraTS20_Training_001 is listed twice: also on line 2 \(as HG_BraTS20_Training_001\)",
      with_csv(HEADER + ROW1 + 'LG_BraTS20_Training_001,0,"[False, False, False, True]",[0]\n')),
    M("csv-spaces-after-commas-keep-the-checks", "data", preprocess("--availability-csv", "{cwd}/avail.csv"),
      r"avail\.csv:2: case HG_BraTS20_Training_001: mask_id 0 \(t2\) disagrees with mask \(flair",
      with_csv("data_name, mask_id, mask, pos_mask_ids\n"
               'HG_BraTS20_Training_001, 0, "[True, False, False, False]", [3]\n')),
    M("csv-byte-order-mark-keeps-the-checks", "data", preprocess("--availability-csv", "{cwd}/avail.csv"),
      r"avail\.csv:2: case HG_BraTS20_Training_001: pos_mask_ids \[0\] disagree",
      with_csv(b"\xef\xbb\xbf" + (HEADER + 'HG_BraTS20_Training_001,3,"[True, False, False, False]",[0]\n').encode())),
    M("csv-not-utf8", "data", preprocess("--availability-csv", "{cwd}/avail.csv"),
      r"avail\.csv: not UTF-8 text \(byte 0xff", with_csv(HEADER.encode() + b"\xff\xfe,1,2,3\n")),
    M("csv-field-over-128k", "data", preprocess("--availability-csv", "{cwd}/avail.csv"),
      r"avail\.csv:2: not a valid CSV row: field larger than field limit",
      with_csv(HEADER + "x" * 140_000 + ',0,"[True, True, True, True]",[14]\n')),
    M("csv-header-only", "data", preprocess("--availability-csv", "{cwd}/avail.csv"),
      r"avail\.csv: the PASSION split CSV lists no case", with_csv(HEADER)),
    M("sites-two-spellings", "data", preprocess(), r"sites\.csv: case BraTS20_Training_001 is named twice",
      with_raw(_sites("case,site\nBraTS20_Training_001,a\nHG_BraTS20_Training_001,b\n"))),
    M("sites-not-utf8", "data", preprocess(), r"sites\.csv: not UTF-8 text", with_raw(_sites(b"case,site\n\xff,a\n"))),
    M("case-list-two-spellings", "data", preprocess("--split", "test={cwd}/t.txt"),
      r"t\.txt: case BraTS20_Training_002 is named twice \(as BraTS20_Training_002 and HG_BraTS20_Training_002\)",
      lambda env: (env.copy_raw(), env.write("t.txt", "BraTS20_Training_002\nHG_BraTS20_Training_002\n"))),
    # ---- voxels, spacing, symbolic links --------------------------------------------------------------------------
    M("nifti-inf-voxel", "data", preprocess(),
      rf"case {CASE}: t2 file .*{CASE}_t2\.nii\.gz contains NaN or Inf voxels",
      with_raw(lambda root: _volume(root, "t2", lambda a: _set(a, np.inf)))),
    M("nifti-nan-voxel-label", "data", preprocess(), rf"case {CASE}: label file .*_seg\.nii\.gz contains NaN",
      with_raw(lambda root: _volume(root, "seg", lambda a: _set(a, np.nan)))),
    M("nifti-nan-spacing", "data", preprocess(),
      rf"case {CASE}: flair file .*flair\.nii\.gz has voxel spacing \[1\.0, nan, 1\.0\]; every spacing must be "
      r"positive", with_raw(lambda root: [_volume(root, r, lambda a: a, zooms=(1, np.nan, 1))
                                           for r in ("flair", "t1ce", "t1", "t2", "seg")])),
    M("nifti-dangling-symlink", "data", preprocess(),
      rf"case {CASE}: .*{CASE}_t2\.nii\.gz is a symbolic link to a missing file", with_raw(_dangling)),
    M("nifti-symlink-loop", "data", preprocess(), rf"case {CASE}: .*{CASE}_t2\.nii\.gz is a symbolic link loop",
      with_raw(_loop)),
    M("predict-dangling-symlink", "predict", lambda env: [str(env.run), str(env.cwd / "raw"), "-o",
                                                          str(env.cwd / "p")],
      rf"case {CASE}: .*{CASE}_t2\.nii\.gz is a symbolic link to a missing file", with_raw(_dangling)),
    M("verify-nan-in-cache", "data", ["verify", "{cwd}/bad.h5"],
      r"bad\.h5: case 'synth_0000': image holds NaN or Inf voxels in modality t1ce", corrupt(_nan_voxel)),
    M("train-nan-in-cache", "train", on_bad_cache(),
      r"bad\.h5: case 'synth_\d+' is corrupted: image, modality t1ce holds NaN or Inf voxels", _nan_training_cache,
      strict=False),
    # ---- dataset descriptions --------------------------------------------------------------------------------------
    M("description-labelmap", "data", preprocess(),
      r"prism-dataset\.yaml: labelmap: unknown key; did you mean 'label_map'\?",
      with_raw(_description(DESCRIPTION + "labelmap: {0: 0}\n"))),
    M("description-sitefile", "data", preprocess(),
      r"prism-dataset\.yaml: sitefile: unknown key; did you mean 'site_file'\?",
      with_raw(_description(DESCRIPTION + "sitefile: sites.csv\n"))),
    M("description-label-missing", "data", preprocess(), r"prism-dataset\.yaml: 'label' is required",
      with_raw(_description('modalities: {flair: "{case}_flair.nii.gz"}\n'))),
    M("description-pattern-type", "data", preprocess(),
      r"prism-dataset\.yaml: modalities\.flair: Input should be a valid string",
      with_raw(_description('modalities: {flair: 3}\nlabel: "{case}_seg.nii.gz"\n'))),
    M("description-not-utf8", "data", preprocess(), r"prism-dataset\.yaml: not UTF-8 text",
      with_raw(lambda root: (root / "prism-dataset.yaml").write_bytes(b"name: \xff\n"))),
    # ---- config fields: non-finite and out of range -------------------------------------------------------------
    M("lr-inf", "train", train("optim.lr=.inf"), r"optim\.lr: Input should be a finite number"),
    M("lr-nan", "train", train("optim.lr=.nan"), r"optim\.lr: Input should be a finite number"),
    M("loss-weight-nan", "train", train("losses.0.weight=.nan"), r"losses\.0\.weight: Input should be a finite"),
    M("intensity-shift-inf", "train", train("data.intensity_shift=.inf"), r"data\.intensity_shift: .*finite"),
    M("grad-clip-inf", "train", train("optim.grad_clip=.inf"), r"optim\.grad_clip: .*finite"),
    M("hd95-empty-negative", "train", train("eval.hd95_empty=-1"), r"eval\.hd95_empty: .*a number of mm >= 0"),
    M("seed-negative", "train", train("train.seed=-1"), r"train\.seed: .*greater than or equal to 0"),
    M("threads-huge", "train", train("train.threads=1e30"), r"train\.threads"),
    M("synthetic-shape-small", "train", train("data.synthetic.shape=[4,4,4]"),
      r"data\.synthetic\.shape: .*every synthetic volume size must be at least 8 and at most 512"),
    M("window-zero", "train", train("eval.window=[0,16,16]"),
      r"eval\.window: .*every window or patch size must be positive and at most 4096"),
    M("config-file-nan", "train", lambda env: ["--config", str(env.write("c.yaml", "optim:\n  lr: .nan\n")),
                                               "--data", str(env.cache), "-o", str(env.cwd / "out")],
      r"c\.yaml: optim\.lr: Input should be a finite number"),
    M("config-file-not-utf8", "train", lambda env: ["--config", str(env.write("c.yaml", b"optim:\n  lr: \xff\n"))],
      r"c\.yaml: not UTF-8 text \(byte 0xff at offset 13\)"),
    M("fold-negative", "train", train("data.fold=-1"), r"data\.fold: .*greater than or equal to 0"),
    M("fold-without-folds", "train", train("data.fold=3"),
      r"no split 'fold3_train' .*; make cross-validation folds with prism-data split CACHE --folds K"),
    M("fold-and-train-split", "train", train("data.fold=0", "data.train_split=test"),
      r"data\.fold chooses the training split \(fold0_train\): leave data\.train_split unset"),
    M("fold-and-val-split", "train", train("data.fold=0", "train.val_split=test"),
      r"data\.fold chooses the validation split \(fold0_val\): leave train\.val_split unset"),
    # ---- prism-data flags -----------------------------------------------------------------------------------------
    M("pre-seed-negative", "data", pre_flags("--seed", "-1"), r"argument --seed: must be an integer in \[0, "),
    M("pre-test-fraction-nan", "data", pre_flags("--test-fraction", "nan"),
      r"argument --test-fraction: must be a finite number in \[0, 1\)"),
    M("pre-val-fraction-inf", "data", pre_flags("--val-fraction", "inf"), r"argument --val-fraction: .*finite"),
    M("pre-spacing-zero", "data", pre_flags("--spacing", "0", "1", "1"),
      r"argument --spacing: must be a finite number in \(0, 100\], got 0"),
    M("pre-spacing-inf", "data", pre_flags("--spacing", "1", "inf", "1"), r"argument --spacing: .*got inf"),
    M("pre-spacing-two-values", "data", pre_flags("--spacing", "1", "1"), r"argument --spacing: expected 3"),
    M("pre-chunk-two-values", "data", pre_flags("--chunk", "16", "16"), r"--chunk: one edge or three"),
    M("pre-chunk-all-whole", "data", pre_flags("--chunk", "0"), r"--chunk: one edge or three"),
    M("pre-min-size-zero", "data", pre_flags("--min-size", "0"), r"argument --min-size: must be an integer in \[1,"),
    M("pre-margin-negative", "data", pre_flags("--margin", "-2"), r"argument --margin: must be an integer in \[0,"),
    M("pre-workers-huge", "data", pre_flags("--workers", "100000"), r"argument --workers: must be an integer"),
    M("pre-rates-nan", "data", pre_flags("--missing-rates", "flair=nan", "--min-size", "8"),
      r"missing rates: each must be in \[0, 1\)"),
    M("synth-seed-negative", "data", ["synth", "-o", "{cwd}/s.h5", "--seed", "-1"], r"--seed must be in \[0, "),
    M("synth-sites-zero", "data", ["synth", "-o", "{cwd}/s.h5", "--sites", "0"], r"--sites in \[1, --cases\]"),
    M("synth-test-fraction-inf", "data", ["synth", "-o", "{cwd}/s.h5", "--test-fraction", "inf"],
      r"--test-fraction and --val-fraction must be in \[0, 1\)"),
    M("synth-shape-huge", "data", ["synth", "-o", "{cwd}/s.h5", "--shape", "8", "8", "100000"],
      r"every --shape size at most 512"),
    M("split-folds-one", "data", ["split", "{cwd}/bad.h5", "--folds", "1"],
      r"argument --folds: must be an integer in \[2, 100\]", lambda env: env.copy_cache()),
    M("split-more-folds-than-cases", "data", ["split", "{cwd}/bad.h5", "--folds", "9"],
      r"--folds: 9 folds of 4 training cases; need 2 to 4", lambda env: env.copy_cache()),
    M("split-seed-nan", "data", ["split", "{cwd}/bad.h5", "--folds", "2", "--seed", "nan"],
      r"argument --seed: invalid int value: 'nan'", lambda env: env.copy_cache()),
    M("split-nothing-to-do", "data", ["split", "{cwd}/bad.h5"],
      r"one of the arguments --hold-out-site --folds is required", lambda env: env.copy_cache()),
    M("split-missing-cache", "data", ["split", "{cwd}/none.h5", "--folds", "2"], r"none\.h5: cache file not found"),
    # ---- hand-edited cache metadata (prism-train refuses it before anything is written) ----------------------------
    M("meta-modalities-not-a-list", "train", on_bad_cache(),
      r"bad\.h5: the cache's metadata is corrupted: root attribute 'modalities' must be a JSON list",
      corrupt(root_attr("modalities", '"flair"'))),
    M("meta-modalities-duplicate", "train", on_bad_cache(),
      r"root attribute 'modalities' must list distinct modality names",
      corrupt(root_attr("modalities", '["flair", "flair", "t1", "t2"]'))),
    M("meta-modalities-missing", "train", on_bad_cache(), r"root attribute 'modalities' is missing",
      corrupt(root_attr("modalities", None))),
    M("meta-modalities-not-text", "train", on_bad_cache(), r"root attribute 'modalities' is not JSON text",
      corrupt(root_attr("modalities", np.arange(4)))),
    M("meta-labels-keys", "train", on_bad_cache(), r"root attribute 'labels' has keys that are not integers",
      corrupt(root_attr("labels", '{"a": "background", "b": "tumour"}'))),
    M("meta-labels-gap", "train", on_bad_cache(), r"root attribute 'labels' must name the labels 0\.\.K-1",
      corrupt(root_attr("labels", '{"0": "background", "5": "tumour"}'))),
    M("meta-label-map-outside", "train", on_bad_cache(), r"root attribute 'label_map' must map raw values to labels",
      corrupt(root_attr("label_map", '{"4": 9}'))),
    M("meta-preprocessing-bad-json", "train", on_bad_cache(), r"root attribute 'preprocessing' is not valid JSON",
      corrupt(root_attr("preprocessing", "{oops"))),
    M("meta-format-version-text", "train", on_bad_cache(), r"root attribute 'format_version' is not an integer",
      corrupt(root_attr("format_version", "one"))),
    M("meta-complete-text", "train", on_bad_cache(), r"root attribute 'complete' is not a boolean",
      corrupt(root_attr("complete", "yes"))),
    M("meta-splits-not-a-group", "train", on_bad_cache(), r"'/splits' is not a group", corrupt(_splits_as_dataset)),
    M("meta-split-of-numbers", "train", on_bad_cache(), r"split 'train' is not a list of case ids",
      corrupt(replace_dataset("splits/train", lambda ds: np.arange(3)))),
    M("meta-sources-bad-json", "train", on_bad_cache(), r"'/provenance/sources' is not a JSON list of source files",
      corrupt(_bad_sources)),
    M("meta-case-not-a-group", "train", on_bad_cache(), r"case 'synth_0000' is corrupted: not "
      r"a group", corrupt(_case_as_dataset)),
    M("meta-image-missing", "train", on_bad_cache(), r"case 'synth_0000'.*dataset 'image' is missing",
      corrupt(lambda f: f.__delitem__(f"{C0}/image"))),
    M("meta-availability-none", "train", on_bad_cache(), r"case 'synth_0000'.*no modality is available",
      corrupt(case_attr("availability", np.zeros(4, np.uint8)))),
    M("meta-present-length", "train", on_bad_cache(), r"attribute 'present' must be 4 numbers",
      corrupt(case_attr("present", np.ones(2, np.uint8)))),
    M("meta-spacing-two", "train", on_bad_cache(), r"case 'synth_0000'.*attribute 'spacing' must be 3 numbers",
      corrupt(case_attr("spacing", np.ones(2)))),
    M("meta-spacing-zero", "train", on_bad_cache(), r"attribute 'spacing' must be three positive sizes",
      corrupt(case_attr("spacing", np.array([1.0, 0.0, 1.0])))),
    M("meta-spacing-nan", "train", on_bad_cache(), r"attribute 'spacing' must be three positive sizes",
      corrupt(case_attr("spacing", np.array([1.0, np.nan, 1.0])))),
    M("meta-spacing-text", "train", on_bad_cache(), r"attribute 'spacing' must be 3 numbers",
      corrupt(case_attr("spacing", "1mm"))),
    M("meta-affine-3x3", "train", on_bad_cache(), r"attribute 'affine' must be 4x4 numbers",
      corrupt(case_attr("affine", np.eye(3)))),
    M("meta-affine-inf", "train", on_bad_cache(), r"attribute 'affine' is not finite",
      corrupt(case_attr("affine", np.full((4, 4), np.inf)))),
    M("meta-crop-box-size", "train", on_bad_cache(), r"crop_box .* does not fit the stored shape \[24, 24, 24\]",
      corrupt(case_attr("crop_box", np.array([[0, 20], [0, 24], [0, 24]])))),
    M("meta-original-shape-length", "train", on_bad_cache(), r"attribute 'original_shape' must be 3 numbers",
      corrupt(case_attr("original_shape", np.array([24, 24])))),
    M("meta-original-spacing-negative", "train", on_bad_cache(),
      r"attribute 'original_spacing' must be three positive sizes",
      corrupt(case_attr("original_spacing", np.array([1.0, -1.0, 1.0])))),
    M("meta-site-array", "train", on_bad_cache(), r"attribute 'site' is not text",
      corrupt(case_attr("site", np.arange(3)))),
    M("meta-image-float64", "train", on_bad_cache(), r"image must be float32 \[4, D, H, W\], is float64",
      corrupt(replace_dataset(f"{C0}/image", lambda ds: ds[()].astype(np.float64)))),
    M("meta-label-int16", "train", on_bad_cache(), r"label must be uint8 \(24, 24, 24\), is int16",
      corrupt(replace_dataset(f"{C0}/label", lambda ds: ds[()].astype(np.int16)))),
    M("meta-label-shape", "train", on_bad_cache(), r"label must be uint8 \(24, 24, 24\), is uint8 \(24, 24, 20\)",
      corrupt(replace_dataset(f"{C0}/label", lambda ds: ds[:, :, :20]))),
    M("meta-foreground-two-columns", "train", on_bad_cache(), r"foreground must be integer \[N, 3\]",
      corrupt(replace_dataset(f"{C0}/foreground", lambda ds: ds[:, :2]))),
    M("meta-foreground-outside", "train", on_bad_cache(), r"foreground points outside the volume \[24, 24, 24\]",
      corrupt(replace_dataset(f"{C0}/foreground", lambda ds: ds[()] + 100))),
    M("info-meta-spacing-zero", "data", ["info", "{cwd}/bad.h5"], r"attribute 'spacing' must be three positive",
      corrupt(case_attr("spacing", np.zeros(3)))),
    M("verify-meta-labels-gap", "data", ["verify", "{cwd}/bad.h5"], r"root attribute 'labels' must name the labels",
      corrupt(root_attr("labels", '{"0": "background", "5": "tumour"}'))),
    # ---- resume on a cache that now holds another dataset -----------------------------------------------------------
    M("resume-cache-replaced", "train", lambda env: ["--resume", str(env.cwd / "run"), "--no-eval"],
      r"run/last\.pt: the run was trained on another dataset than .*c\.h5 holds now \(dataset fingerprint",
      _other_dataset),
]


@pytest.fixture(scope="module")
def readonly(tmp_path_factory):
    """A read-only tmpfs (None where mounting is not allowed: those cases are skipped)."""
    point = tmp_path_factory.mktemp("readonly")
    if os.geteuid() != 0:
        yield None
        return
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(point)], capture_output=True)
    if done.returncode != 0:
        yield None
        return
    subprocess.run(["mount", "-o", "remount,ro", str(point)], check=True)
    yield point
    subprocess.run(["umount", "-l", str(point)], capture_output=True)


@pytest.fixture(scope="module")
def env_parts(tmp_path_factory, tiny_cache):
    base = tmp_path_factory.mktemp("bad_inputs_data")
    raw = base / "raw"
    write_synthetic_nifti(raw, SynthSettings(cases=3, shape=(12, 12, 10), seed=2))
    run_cache = base / "run_cache.h5"
    shutil.copy(tiny_cache, run_cache)
    run = base / "run"
    assert train_main(["--data", str(run_cache), "-o", str(run), "--no-eval", *QUICK]) == 0
    return tiny_cache, run, raw


def test_catalogue_size_matches_the_docstring_and_ids_are_unique():
    ids = [m.id for m in CATALOGUE]
    assert len(set(ids)) == len(ids)
    assert f"{len(ids)} cases" in __doc__


#: the mistakes whose check trains a model or starts a process: the slow tier
SLOW_MISTAKES = {"train-nan-in-cache"}


@pytest.mark.parametrize("mistake", [pytest.param(m, id=m.id, marks=[pytest.mark.slow] if m.id in SLOW_MISTAKES else [])
                                     for m in CATALOGUE])
def test_mistake_is_one_line_exit_2_names_the_culprit_and_changes_nothing(mistake, env_parts, readonly, tmp_path,
                                                                          monkeypatch, capsys):
    if mistake.needs_mount and readonly is None:
        pytest.skip("needs a read-only tmpfs (root and mount rights)")
    cache, run, raw = env_parts
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    env = Env(cwd=cwd, cache=cache, run=run, raw=raw, readonly=readonly)
    for name, value in mistake.env_vars(env).items():
        monkeypatch.setenv(name, value)
    mistake.setup(env)
    argv = mistake.argv(env)
    roots = [cwd, run, raw, cache.parent]
    before = tree_state(*roots)
    hook = sys.excepthook
    capsys.readouterr()
    try:
        code = MAINS[mistake.cli](argv)
    except SystemExit as exc:  # argparse
        code = exc.code
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, err[-3000:]
    assert len(lines) == 1, err[-3000:]
    assert re.search(mistake.culprit, lines[0]), lines[0]
    assert "Traceback" not in err
    assert sys.excepthook is hook  # never replaced, whatever failed
    after = tree_state(*roots)
    if mistake.strict:
        assert after == before
    else:
        assert {k: v for k, v in after.items() if k in before} == before
        assert not list(cwd.rglob("*.pt"))  # no checkpoint of a run that met bad data


def _float_fields(model, prefix: str = "") -> list[str]:
    """Dotted names of every float field of a config section and the sections below it."""
    import typing

    from pydantic import BaseModel

    out = []
    for name, info in model.model_fields.items():
        args = typing.get_args(info.annotation) or (info.annotation,)
        nested = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
        if nested:  # a list of sections: its first item
            item = "0." if typing.get_origin(info.annotation) is list else ""
            out += _float_fields(nested[0], f"{prefix}{name}.{item}")
        elif float in args:
            out.append(prefix + name)
    return out


def test_every_float_field_of_the_config_refuses_nan_and_infinities():
    from prism.config import Config, build_config
    from prism.errors import ConfigError

    fields = _float_fields(Config)
    assert {"optim.lr", "data.foreground_fraction", "eval.overlap", "eval.hd95_empty"} <= set(fields)
    assert "losses.0.weight" in fields
    for dotted in fields:
        for value in (".nan", ".inf", "-.inf"):
            # a field with its own validator (eval.hd95_empty: a number, 'convention' or null) says what it takes
            expected = "a number of mm >= 0" if dotted == "eval.hd95_empty" else "Input should be a finite number"
            with pytest.raises(ConfigError, match=re.escape(dotted) + ": .*" + expected):
                build_config(None, [f"{dotted}={value}"])
