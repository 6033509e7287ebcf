"""The catalogue of user mistakes: each one exits with status 2, prints exactly one line on stderr naming the
culprit (file, field, flag, case or plugin), and leaves nothing new or changed on disk.

The CLIs' ``main(argv)`` run in-process (fast on 2 cores); the working directory is an empty temporary folder so
a default ``runs/`` folder would be noticed. Mistakes that need a broken file build it before the snapshot.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from conftest import FAST, tree_state
from prism.cli.data import main as data_main
from prism.cli.evaluate import main as eval_main
from prism.cli.predict import main as predict_main
from prism.cli.train import main as train_main
from prism.data_tools.synthetic import SynthSettings, write_synthetic_nifti

MAINS = {"train": train_main, "data": data_main, "eval": eval_main, "predict": predict_main}
QUICK = [*FAST, "train.steps=1", "train.loggers=[csv]"]
HEADER = "data_name,mask_id,mask,pos_mask_ids\n"


@dataclass
class Env:
    """Paths a mistake may use: ``cwd`` (empty, snapshotted), a tiny cache, a trained run, raw NIfTI cases."""

    cwd: Path
    cache: Path
    run: Path
    raw: Path

    def copy_run(self) -> Path:
        dst = self.cwd / "run"
        shutil.copytree(self.run, dst)
        return dst

    def copy_raw(self) -> Path:
        dst = self.cwd / "raw"
        shutil.copytree(self.raw, dst)
        return dst

    def write(self, name: str, text: str) -> Path:
        p = self.cwd / name
        p.write_text(text)
        return p


@dataclass
class Mistake:
    """``argv(env)`` for CLI ``cli`` must fail with one stderr line matching ``culprit`` (``{cwd}`` etc. filled)."""

    id: str
    cli: str
    argv: Callable[[Env], list[str]]
    culprit: str
    setup: Callable[[Env], None] = field(default=lambda env: None)


def T(id_: str, argv: Callable[[Env], list[str]] | list[str], culprit: str, setup=None, cli: str = "train"):
    fn = argv if callable(argv) else (lambda env, a=tuple(argv): list(a))
    return Mistake(id_, cli, fn, culprit, setup or (lambda env: None))


def train(*extra: str) -> Callable[[Env], list[str]]:
    """prism-train on the tiny cache into cwd/out with ``extra`` (``{cache}``/``{cwd}``/``{run}`` filled)."""
    return lambda env: ["--data", str(env.cache), "-o", str(env.cwd / "out"), "--no-eval", *QUICK,
                        *[e.format(cache=env.cache, cwd=env.cwd, run=env.run) for e in extra]]


def R(id_: str, culprit: str, *extra: str, edit: Callable[[Path], None] | None = None) -> Mistake:
    """prism-train --resume of a copy of the trained run, edited by ``edit`` before the snapshot."""
    def setup(env: Env) -> None:
        run = env.copy_run()
        if edit is not None:
            edit(run)
    return Mistake(id_, "train", lambda env: ["--resume", str(env.cwd / "run"), "--no-eval", *extra], culprit, setup)


def data(*args: str) -> Callable[[Env], list[str]]:
    return lambda env: [a.format(cache=env.cache, cwd=env.cwd, raw=env.raw) for a in args]


def _flip_split_name(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    at = raw.rfind(b"synth_0001")  # the link name in the cases group's heap (the split's copy comes first)
    raw[at + 9] = ord("X")
    path.write_bytes(bytes(raw))


def _bad_cache(kind: str) -> Callable[[Env], None]:
    def setup(env: Env) -> None:
        dst = env.cwd / "bad.h5"
        if kind == "text":
            dst.write_text("not hdf5")
            return
        if kind == "plain_h5":
            with h5py.File(dst, "w") as f:
                f["x"] = 1
            return
        shutil.copy(env.cache, dst)
        if kind == "truncated":
            with open(dst, "r+b") as fh:
                fh.truncate(dst.stat().st_size // 2)
        elif kind == "incomplete":
            with h5py.File(dst, "r+") as f:
                f.attrs["complete"] = False
        elif kind == "version":
            with h5py.File(dst, "r+") as f:
                f.attrs["format_version"] = 99
        elif kind == "json":
            with h5py.File(dst, "r+") as f:
                f.attrs["modalities"] = "[flair, t1"
        elif kind == "case_attr":
            with h5py.File(dst, "r+") as f:
                del f["cases/synth_0002"].attrs["spacing"]
        elif kind == "flipped_name":
            _flip_split_name(dst)
        elif kind == "chunk":
            with h5py.File(dst, "r") as f:
                info = f["cases/synth_0000/image"].id.get_chunk_info(0)
            raw = bytearray(dst.read_bytes())
            raw[info.byte_offset + info.size // 2] ^= 0xFF
            dst.write_bytes(bytes(raw))
    return setup


def _edit_config(text_edit: Callable[[str], str]) -> Callable[[Path], None]:
    def edit(run: Path) -> None:
        cfg = run / "config.yaml"
        cfg.write_text(text_edit(cfg.read_text()))
    return edit


def _replace_checkpoint(obj: object) -> Callable[[Path], None]:
    def edit(run: Path) -> None:
        torch.save(obj, run / "last.pt")
    return edit


class _Pickled:  # an arbitrary Python object: not loadable with weights_only=True
    pass


def _truncate_checkpoint(run: Path) -> None:
    with open(run / "last.pt", "r+b") as fh:
        fh.truncate(1000)


def _set_version(run: Path) -> None:
    state = torch.load(run / "last.pt", weights_only=True)
    state["version"] = 99
    torch.save(state, run / "last.pt")


def _nifti_edit(kind: str) -> Callable[[Env], None]:
    def setup(env: Env) -> None:
        import nibabel as nib

        root = env.copy_raw()
        case = "BraTS20_Training_001"
        folder = root / case
        if kind == "garbage":
            (folder / f"{case}_t2.nii.gz").write_bytes(b"\x1f\x8b garbage")
        elif kind == "shape":
            img = nib.load(folder / f"{case}_t2.nii.gz")
            nib.save(nib.Nifti1Image(np.zeros((5, 5, 5), np.int16), img.affine), folder / f"{case}_t2.nii.gz")
        elif kind == "no_label":
            (folder / f"{case}_seg.nii.gz").unlink()
        elif kind == "label_values":
            img = nib.load(folder / f"{case}_seg.nii.gz")
            seg = np.asarray(img.dataobj).copy()
            seg[seg.shape[0] // 2, seg.shape[1] // 2, seg.shape[2] // 2] = 7
            nib.save(nib.Nifti1Image(seg, img.affine), folder / f"{case}_seg.nii.gz")
        elif kind == "nan":
            img = nib.load(folder / f"{case}_flair.nii.gz")
            vol = np.asarray(img.dataobj).astype(np.float32)
            vol[0, 0, 0] = np.nan
            nib.save(nib.Nifti1Image(vol, img.affine), folder / f"{case}_flair.nii.gz")
        elif kind == "affine":
            img = nib.load(folder / f"{case}_t1.nii.gz")
            nib.save(nib.Nifti1Image(np.asarray(img.dataobj), img.affine * 2), folder / f"{case}_t1.nii.gz")
        elif kind == "empty":
            shutil.rmtree(root)
            root.mkdir()
    return setup


def _csv(rows: str) -> Callable[[Env], None]:
    def setup(env: Env) -> None:
        env.write("avail.csv", HEADER + rows)
    return setup


PRE = ("preprocess", "{raw}", "-o", "{cwd}/c.h5", "--min-size", "8", "--chunk", "8")
ROW1 = 'HG_BraTS20_Training_001,3,"[True, False, False, False]",[3]\n'
ROW2 = 'HG_BraTS20_Training_002,0,"[False, False, False, True]",[0]\n'

CATALOGUE: list[Mistake] = [
    # ---- prism-train: overrides and config fields ------------------------------------------------------------
    T("unknown-field", train("optim.lrr=1"), r"optim\.lrr: unknown field; did you mean 'lr'"),
    T("unknown-section", train("optimiser.lr=1"), r"optimiser: unknown field"),
    T("override-without-equals", train("optim.lr"), r"override 'optim\.lr' must look like"),
    T("override-empty-field", train(".lr=1"), r"override '\.lr=1' has an empty field name"),
    T("override-value-is-section", train("optim.lr.x=1"), r"optim\.lr is a value, not a section"),
    T("steps-not-int", train("train.steps=abc"), r"train\.steps"),
    T("steps-zero", train("train.steps=0"), r"train\.steps"),
    T("lr-negative", train("optim.lr=-1"), r"optim\.lr"),
    T("batch-zero", train("data.batch_size=0"), r"data\.batch_size"),
    T("patch-zero", train("data.patch_size=[0,16,16]"), r"data\.patch_size"),
    T("patch-two-dims", train("data.patch_size=[16,16]"), r"data\.patch_size"),
    T("patch-larger-than-data", train("data.patch_size=[64,64,64]"), r"data\.patch_size: \[64, 64, 64\] is larger"),
    T("optimizer-unknown", train("optim.name=lamb"), r"optim\.name"),
    T("device-unknown-field", train("train.device=tpu"), r"train\.device"),
    T("amp-unknown", train("train.amp=fp8"), r"train\.amp"),
    T("momentum-one", train("optim.momentum=1"), r"optim\.momentum"),
    T("foreground-fraction", train("data.foreground_fraction=2"), r"data\.foreground_fraction"),
    T("rotate-too-far", train("data.rotate_degrees=90"), r"data\.rotate_degrees"),
    T("workers-negative", train("data.num_workers=-1"), r"data\.num_workers"),
    T("log-every-zero", train("train.log_every=0"), r"train\.log_every"),
    T("checkpoint-every-zero", train("train.checkpoint_every=0"), r"train\.checkpoint_every"),
    T("no-losses", train("losses=[]"), r"losses"),
    T("loss-list-index", train("losses.5.name=fuse"), r"losses\.5 is not a valid list index"),
    T("train-eval-overlap", train("eval.overlap=1.0"), r"eval\.overlap"),
    T("train-eval-max-cases", train("eval.max_cases=0"), r"eval\.max_cases"),
    T("threads-zero", train("train.threads=0"), r"train\.threads"),
    T("val-split-missing", train("train.val_every=2"), r"train\.val_split: no split 'val'"),
    T("val-cases-zero", train("train.val_every=2", "train.val_cases=0"), r"train\.val_cases"),
    # ---- prism-train: plugins ---------------------------------------------------------------------------------
    T("strategy-unknown", train("--strategy", "nosuch"), r"strategy\.name.*nosuch"),
    T("backbone-unknown", train("model.name=nosuch"), r"model\.name.*nosuch"),
    T("loss-unknown", train("losses.0.name=nosuch"), r"nosuch"),
    T("masking-unknown", train("masking.train.name=nosuch"), r"masking.*nosuch"),
    # ---- prism-train: flags -----------------------------------------------------------------------------------
    T("flag-typo", train("--stpes", "3"), r"unrecognized arguments: --stpes"),
    T("steps-flag-not-int", train("--steps", "x"), r"argument --steps: invalid int value: 'x'"),
    T("device-flag-choice", train("--device", "tpu"), r"argument --device: invalid choice: 'tpu'"),
    T("config-and-preset", lambda env: ["--config", str(env.write("c.yaml", "{}")), "--preset", "demo"],
      r"argument -p/--preset: not allowed with argument -c/--config"),
    T("preset-unknown", ["--preset", "demoo", "--no-eval"], r"--preset: unknown preset 'demoo'; did you mean 'demo'"),
    T("config-missing", lambda env: ["--config", str(env.cwd / "missing.yaml")], r"missing\.yaml: cannot read"),
    T("config-bad-yaml", lambda env: ["--config", str(env.write("c.yaml", "optim: [1,\n"))],
      r"c\.yaml:.* invalid YAML"),
    T("config-not-mapping", lambda env: ["--config", str(env.write("c.yaml", "- 1\n- 2\n"))],
      r"c\.yaml: a config file must hold a mapping"),
    T("config-unknown-field", lambda env: ["--config", str(env.write("c.yaml", "optim:\n  lrate: 1\n"))],
      r"c\.yaml: optim\.lrate: unknown field"),
    T("config-bad-value", lambda env: ["--config", str(env.write("c.yaml", "train:\n  steps: -3\n"))],
      r"c\.yaml: train\.steps"),
    T("output-is-a-file", lambda env: ["--data", str(env.cache), "-o", str(env.write("afile", "x")), "--no-eval",
                                       *QUICK], r"afile: cannot create the folder: a file of that name exists"),
    # ---- prism-train: data ------------------------------------------------------------------------------------
    T("cache-missing", train("--data", "{cwd}/missing.h5"), r"missing\.h5: cache file not found"),
    T("cache-override-missing", lambda env: ["-o", str(env.cwd / "out"), "--no-eval", *QUICK,
                                             f"data.cache={env.cwd}/nope.h5"], r"nope\.h5: cache file not found"),
    T("cache-is-text", train("--data", "{cwd}/bad.h5"), r"bad\.h5: not a readable HDF5 file", _bad_cache("text")),
    T("cache-not-prism", train("--data", "{cwd}/bad.h5"), r"bad\.h5: not a prism cache", _bad_cache("plain_h5")),
    T("cache-truncated", train("--data", "{cwd}/bad.h5"), r"bad\.h5: not a readable HDF5 file",
      _bad_cache("truncated")),
    T("cache-incomplete", train("--data", "{cwd}/bad.h5"), r"bad\.h5: cache is incomplete", _bad_cache("incomplete")),
    T("cache-version", train("--data", "{cwd}/bad.h5"), r"bad\.h5: cache format version 99",
      _bad_cache("version")),
    T("cache-metadata-json", train("--data", "{cwd}/bad.h5"), r"bad\.h5: the cache's metadata is corrupted",
      _bad_cache("json")),
    T("cache-case-attribute", train("--data", "{cwd}/bad.h5"), r"bad\.h5: case 'synth_0002' is corrupted",
      _bad_cache("case_attr")),
    T("cache-flipped-case-name", train("--data", "{cwd}/bad.h5"),
      r"bad\.h5: corrupted: split '\w+' names case 'synth_0001'", _bad_cache("flipped_name")),
    T("train-split-unknown", train("data.train_split=nosuch"), r"no split 'nosuch'"),
    T("train-eval-split-unknown", lambda env: ["--data", str(env.cache), "-o", str(env.cwd / "out"), *QUICK,
                                         "eval.split=nosuch"], r"no split 'nosuch'"),
    # ---- prism-train --resume ---------------------------------------------------------------------------------
    T("resume-missing", lambda env: ["--resume", str(env.cwd / "nope")], r"nope: not a prism run folder"),
    T("resume-with-output", lambda env: ["--resume", str(env.run), "-o", str(env.cwd / "x")],
      r"--resume .* cannot be combined with --output"),
    T("resume-with-config", lambda env: ["--resume", str(env.run), "--config", str(env.write("c.yaml", "{}"))],
      r"cannot be combined with --config"),
    T("resume-not-a-run", lambda env: ["--resume", str(env.cwd)], r"not a prism run folder \(no config\.yaml\)"),
    R("resume-changed-model",
      r"last\.pt: does not match this run's config: model weights: .*config changed since the checkpoint: "
      r"model\.options\.width \(4 -> 8\)", "model.options.width=8"),
    R("resume-truncated-checkpoint", r"last\.pt: unreadable checkpoint", edit=_truncate_checkpoint),
    R("resume-pickled-checkpoint", r"last\.pt: holds pickled Python objects",
      edit=_replace_checkpoint({"obj": _Pickled()})),
    R("resume-foreign-checkpoint", r"last\.pt: not a prism checkpoint",
      edit=_replace_checkpoint({"weights": torch.zeros(2)})),
    R("resume-checkpoint-version", r"last\.pt: checkpoint version 99", edit=_set_version),
    R("resume-config-bad-yaml", r"config\.yaml:.*YAML", edit=_edit_config(lambda t: t + "\n  : [\n")),
    R("resume-config-unknown-field", r"config\.yaml: optim\.lrr: unknown field",
      edit=_edit_config(lambda t: t.replace("optim:\n", "optim:\n  lrr: 1\n"))),
    R("resume-bad-override", r"train\.steps", "train.steps=-1"),
    R("resume-cache-gone", r"/nonexistent/c\.h5: cache file not found",
      edit=_edit_config(lambda t: re.sub(r"cache: .*", "cache: /nonexistent/c.h5", t, count=1))),
    # ---- prism-data synth -------------------------------------------------------------------------------------
    T("synth-one-case", data("synth", "-o", "{cwd}/s.h5", "--cases", "1"), r"--cases must be at least 2", cli="data"),
    T("synth-small-shape", data("synth", "-o", "{cwd}/s.h5", "--shape", "4", "4", "4"), r"--shape", cli="data"),
    T("synth-test-fraction", data("synth", "-o", "{cwd}/s.h5", "--test-fraction", "1.5"), r"--test-fraction",
      cli="data"),
    T("synth-fractions-sum", data("synth", "-o", "{cwd}/s.h5", "--test-fraction", "0.5", "--val-fraction", "0.6"),
      r"--val-fraction", cli="data"),
    T("synth-output-is-folder", data("synth", "-o", "{cwd}"), r"cannot write the cache: is a folder", cli="data"),
    T("synth-no-output", data("synth"), r"the following arguments are required: -o/--output", cli="data"),
    T("synth-layout-choice", data("synth", "-o", "{cwd}/n", "--nifti", "--layout", "brats2099"),
      r"argument --layout: invalid choice: 'brats2099'", cli="data"),
    T("data-no-command", data(), r"the following arguments are required: COMMAND", cli="data"),
    T("data-unknown-command", data("synthesise"), r"invalid choice: 'synthesise'", cli="data"),
    # ---- prism-data preprocess --------------------------------------------------------------------------------
    T("pre-raw-missing", data("preprocess", "{cwd}/nope", "-o", "{cwd}/c.h5"), r"nope", cli="data"),
    T("pre-raw-empty", lambda env: ["preprocess", str(env.cwd / "raw"), "-o", str(env.cwd / "c.h5")],
      r"raw", _nifti_edit("empty"), cli="data"),
    T("pre-output-is-folder", data("preprocess", "{raw}", "-o", "{cwd}", "--min-size", "8", "--chunk", "8"),
      r"must be a cache file \(\.h5\), not a folder", cli="data"),
    T("pre-workers-zero", data(*PRE, "--workers", "0"), r"--workers", cli="data"),
    T("pre-chunk-small", data(*PRE, "--chunk", "2"), r"--chunk", cli="data"),
    T("pre-split-missing-file", data(*PRE, "--split", "train={cwd}/none.txt"), r"--split train=.*none\.txt",
      cli="data"),
    T("pre-split-no-equals", data(*PRE, "--split", "train"), r"--split train: expected NAME=FILE", cli="data"),
    T("pre-split-unknown-case", data(*PRE, "--split", "test={cwd}/t.txt"), r"t\.txt: names unknown cases: nobody",
      lambda env: env.write("t.txt", "nobody\n"), cli="data"),
    T("pre-csv-missing", data(*PRE, "--availability-csv", "{cwd}/none.csv"), r"--availability-csv: .*none\.csv",
      cli="data"),
    T("pre-csv-not-passion", data(*PRE, "--availability-csv", "{cwd}/avail.csv"), r"avail\.csv: not a PASSION",
      lambda env: env.write("avail.csv", "a,b\n1,2\n"), cli="data"),
    T("pre-csv-mask-id", data(*PRE, "--availability-csv", "{cwd}/avail.csv"),
      r"avail\.csv:2: case HG_BraTS20_Training_001: mask_id 0 \(t2\) disagrees with mask \(flair",
      _csv('HG_BraTS20_Training_001,0,"[True, False, False, False]",[3]\n'), cli="data"),
    T("pre-csv-pos-mask-ids", data(*PRE, "--availability-csv", "{cwd}/avail.csv"),
      r"avail\.csv:3: case HG_BraTS20_Training_002: pos_mask_ids \[0, 3\] disagree",
      _csv(ROW1 + 'HG_BraTS20_Training_002,0,"[False, False, False, True]","[0, 3]"\n'), cli="data"),
    T("pre-csv-mask-length", data(*PRE, "--availability-csv", "{cwd}/avail.csv"),
      r"avail\.csv:2: case HG_BraTS20_Training_001: mask must have 4 entries",
      _csv('HG_BraTS20_Training_001,0,"[True, False]",[0]\n'), cli="data"),
    T("pre-csv-mask-eval", data(*PRE, "--availability-csv", "{cwd}/avail.csv"),
      r"avail\.csv:2: .* is not a list of True/False",
      _csv('HG_BraTS20_Training_001,0,"[__import__(\'os\')]",[0]\n'), cli="data"),
    T("pre-csv-duplicate", data(*PRE, "--availability-csv", "{cwd}/avail.csv"),
      r"avail\.csv:3: case HG_BraTS20_Training_001 is listed twice", _csv(ROW1 + ROW1), cli="data"),
    T("pre-csv-unknown-case", data(*PRE, "--availability-csv", "{cwd}/avail.csv"),
      r"avail\.csv: names unknown cases: HG_BraTS20_Training_099",
      _csv(ROW1 + ROW2 + 'HG_BraTS20_Training_099,0,"[False, False, False, True]",[0]\n'), cli="data"),
    T("pre-csv-unlisted", data(*PRE, "--test-fraction", "0.01", "--availability-csv", "{cwd}/avail.csv"),
      r"avail\.csv: training cases absent from the CSV: BraTS20_Training_00\d.*; say what they get",
      _csv(ROW1), cli="data"),
    T("pre-rates-unknown-modality", data(*PRE, "--missing-rates", "adc=0.5"), r"unknown modalities \['adc'\]",
      cli="data"),
    T("pre-rates-out-of-range", data(*PRE, "--missing-rates", "flair=1.5"), r"missing rates: each must be in",
      cli="data"),
    T("pre-rates-garbage", data(*PRE, "--missing-rates", "lots"), r"missing rates: 'lots' is not 'modality=rate'",
      cli="data"),
    T("pre-layout-unknown", data(*PRE, "--layout", "brats2099"), r"brats2099", cli="data"),
    T("pre-nifti-garbage", lambda env: ["preprocess", str(env.cwd / "raw"), "-o", str(env.cwd / "c.h5"),
                                        "--min-size", "8", "--chunk", "8"],
      r"case BraTS20_Training_001: cannot read .*BraTS20_Training_001_t2\.nii\.gz", _nifti_edit("garbage"),
      cli="data"),
    T("pre-nifti-shape", lambda env: ["preprocess", str(env.cwd / "raw"), "-o", str(env.cwd / "c.h5"),
                                      "--min-size", "8", "--chunk", "8"],
      r"case BraTS20_Training_001: BraTS20_Training_001_t2\.nii\.gz has shape", _nifti_edit("shape"), cli="data"),
    T("pre-nifti-affine", lambda env: ["preprocess", str(env.cwd / "raw"), "-o", str(env.cwd / "c.h5"),
                                       "--min-size", "8", "--chunk", "8"],
      r"case BraTS20_Training_001: .*different affines", _nifti_edit("affine"), cli="data"),
    T("pre-no-label", lambda env: ["preprocess", str(env.cwd / "raw"), "-o", str(env.cwd / "c.h5"),
                                   "--min-size", "8", "--chunk", "8"],
      r"BraTS20_Training_001", _nifti_edit("no_label"), cli="data"),
    T("pre-label-values", lambda env: ["preprocess", str(env.cwd / "raw"), "-o", str(env.cwd / "c.h5"),
                                       "--min-size", "8", "--chunk", "8"],
      r"case BraTS20_Training_001: BraTS20_Training_001_seg\.nii\.gz has label values \[7\]",
      _nifti_edit("label_values"), cli="data"),
    T("pre-nan-voxels", lambda env: ["preprocess", str(env.cwd / "raw"), "-o", str(env.cwd / "c.h5"),
                                     "--min-size", "8", "--chunk", "8"],
      r"case BraTS20_Training_001: .*flair\.nii\.gz contains NaN or Inf", _nifti_edit("nan"), cli="data"),
    # ---- prism-data verify / info -----------------------------------------------------------------------------
    T("verify-missing", data("verify", "{cwd}/none.h5"), r"none\.h5: cache file not found", cli="data"),
    T("verify-text", data("verify", "{cwd}/bad.h5"), r"bad\.h5: not a readable HDF5 file", _bad_cache("text"),
      cli="data"),
    T("verify-metadata-json", data("verify", "{cwd}/bad.h5"), r"bad\.h5: provenance is not valid JSON",
      _bad_cache("json"), cli="data"),
    T("verify-flipped-name", data("verify", "{cwd}/bad.h5"), r"bad\.h5: .*(metadata is corrupted|names unknown cases)",
      _bad_cache("flipped_name"), cli="data"),
    T("verify-corrupted-chunk", data("verify", "{cwd}/bad.h5"), r"bad\.h5: case 'synth_0000': corrupted chunk",
      _bad_cache("chunk"), cli="data"),
    T("verify-temporary", data("verify", "{cwd}/.c.h5.tmp-0a0b0c0d-123-ab"), r"temporary file of an unfinished build",
      lambda env: env.write(".c.h5.tmp-0a0b0c0d-123-ab", "x"), cli="data"),
    T("info-missing", data("info", "{cwd}/none.h5"), r"none\.h5: cache file not found", cli="data"),
    T("info-case-attribute", data("info", "{cwd}/bad.h5"), r"bad\.h5: case 'synth_0002' is corrupted",
      _bad_cache("case_attr"), cli="data"),
    # ---- prism-eval -------------------------------------------------------------------------------------------
    T("eval-run-missing", lambda env: [str(env.cwd / "nope")], r"nope: run folder not found", cli="eval"),
    T("eval-not-a-run", lambda env: [str(env.cwd)], r"not a prism run folder", cli="eval"),
    T("eval-no-checkpoint", lambda env: [str(env.cwd / "run")], r"last\.pt: checkpoint not found",
      lambda env: (env.copy_run() / "last.pt").unlink(), cli="eval"),
    T("eval-split-unknown", lambda env: [str(env.run), "--split", "nosuch"], r"no split 'nosuch'", cli="eval"),
    T("eval-data-missing", lambda env: [str(env.run), "--data", str(env.cwd / "none.h5")], r"none\.h5", cli="eval"),
    T("eval-overlap", lambda env: [str(env.run), "--overlap", "1.5"], r"overlap", cli="eval"),
    T("eval-max-cases", lambda env: [str(env.run), "--max-cases", "0"], r"max.cases", cli="eval"),
    T("eval-window-type", lambda env: [str(env.run), "--window", "a", "b", "c"],
      r"argument --window: invalid int value: 'a'", cli="eval"),
    T("eval-cache-moved", lambda env: [str(env.cwd / "run")], r"/gone/c\.h5.*--data",
      lambda env: _edit_config(lambda t: re.sub(r"cache: .*", "cache: /gone/c.h5", t, count=1))(env.copy_run()),
      cli="eval"),
    T("eval-changed-model", lambda env: [str(env.cwd / "run"), "--max-cases", "1"],
      r"last\.pt: does not match this run's config: model weights: .*model\.options\.width \(4 -> 8\)",
      lambda env: _edit_config(lambda t: t.replace("width: 4", "width: 8"))(env.copy_run()), cli="eval"),
    T("eval-pickled-checkpoint", lambda env: [str(env.cwd / "run")], r"last\.pt: holds pickled Python objects",
      lambda env: _replace_checkpoint({"obj": _Pickled()})(env.copy_run()), cli="eval"),
    T("compare-missing", lambda env: ["compare", str(env.cwd / "a"), str(env.cwd / "b")], r"a", cli="eval"),
    # ---- prism-predict ----------------------------------------------------------------------------------------
    T("predict-input-missing", lambda env: [str(env.run), str(env.cwd / "nope"), "-o", str(env.cwd / "p")],
      r"nope: input folder not found", cli="predict"),
    T("predict-input-empty", lambda env: [str(env.run), str(env.cwd / "raw"), "-o", str(env.cwd / "p")],
      r"raw: no case folders or NIfTI files found", _nifti_edit("empty"), cli="predict"),
    T("predict-model-missing", lambda env: [str(env.cwd / "nope"), str(env.raw), "-o", str(env.cwd / "p")],
      r"nope: run folder not found", cli="predict"),
    T("predict-layout-unknown", lambda env: [str(env.run), str(env.raw), "-o", str(env.cwd / "p"), "--layout",
                                             "brats2099"], r"brats2099", cli="predict"),
    T("predict-input-shapes", lambda env: [str(env.run), str(env.cwd / "raw"), "-o", str(env.cwd / "p")],
      r"case BraTS20_Training_001: BraTS20_Training_001_t2\.nii\.gz has shape", _nifti_edit("shape"),
      cli="predict"),
    T("predict-no-output", lambda env: [str(env.run), str(env.raw)], r"required: -o/--output", cli="predict"),
    T("predict-output-is-file", lambda env: [str(env.run), str(env.raw), "-o", str(env.write("p", "x"))],
      r"p: exists and is not a folder", cli="predict"),
]


@pytest.fixture(scope="module")
def env_parts(tmp_path_factory, tiny_cache):
    base = tmp_path_factory.mktemp("bad_inputs")
    raw = base / "raw"
    write_synthetic_nifti(raw, SynthSettings(cases=3, shape=(12, 12, 10), seed=2))
    run = base / "run"
    assert train_main(["--data", str(tiny_cache), "-o", str(run), "--no-eval", *QUICK]) == 0
    return tiny_cache, run, raw


def test_catalogue_is_large_and_unique():
    ids = [m.id for m in CATALOGUE]
    assert len(ids) >= 80 and len(set(ids)) == len(ids)


@pytest.mark.parametrize("mistake", CATALOGUE, ids=[m.id for m in CATALOGUE])
def test_mistake_is_one_line_exit_2_names_the_culprit_and_writes_nothing(mistake, env_parts, tmp_path, monkeypatch,
                                                                         capsys):
    cache, run, raw = env_parts
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    env = Env(cwd=cwd, cache=cache, run=run, raw=raw)
    mistake.setup(env)
    argv = mistake.argv(env)
    before = tree_state(cwd, run, raw, cache.parent)
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
    assert tree_state(cwd, run, raw, cache.parent) == before


def test_lock_file_names_holder_json(env_parts):
    _, run, _ = env_parts
    text = (run / ".prism-train.lock").read_text()
    assert text == "" or json.loads(text)["pid"] > 0  # released by the in-process run, or a live holder's record
