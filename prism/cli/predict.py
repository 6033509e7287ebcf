"""prism-predict: label maps for new cases, with whatever modalities each case has, in the inputs' original space;
optionally class probabilities, test-time mirroring, and an ensemble of several runs."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .common import OneLineParser, run_command, stdout_console

if TYPE_CHECKING:
    from ..runs import TrainedRun

EPILOG = """\
examples:
  prism-predict runs/standard-20261122-101500 BraTS2021_Validation -o predictions
  prism-predict RUN one_case_folder -o out --window 128 128 128 --device cuda
  prism-predict RUN INPUT -o out --tta mirror --save-probabilities
  prism-predict runs/fold0 runs/fold1 runs/fold2 runs/fold3 runs/fold4 INPUT -o out    5-fold ensemble

INPUT_DIR holds one folder per case (or is itself one case folder) named like the training data (BraTS
2018-2021, 2023+, or a prism-dataset.yaml description); missing modality files are fine. Each case gives
OUT_DIR/<case>.nii.gz: the crop undone, the dataset's label values restored (BraTS 2018-2021: ET = 4), and the
affine and header of the case's first modality file. Modalities and the label map come from the run's cache
(data.cache in RUN/config.yaml; --data points elsewhere if it moved).

Several MODEL folders make an ensemble: the runs' softmax probabilities are averaged before the argmax (the runs
must share modalities, classes and label map); window, overlap, test-time mirroring and precision are the first
run's unless given here. --tta mirror averages the probabilities of the 8 flips of each window (nnU-Net's
test-time mirroring). --save-probabilities also writes OUT_DIR/<case>.npz (numpy.load): 'probabilities' float32
[K, X, Y, Z] in the label map's voxel grid (crop undone, background outside it), 'labels' the raw label value of
each class, 'modalities' the modalities used, 'affine' the 4x4 voxel-to-world matrix; its argmax over the first
axis, mapped through 'labels', is the label map.
"""


def load_runs(run_dirs: Sequence[str | Path], *, cache: str | Path | None = None, device: str | None = None,
              overrides: Sequence[str] = ()) -> TrainedRun:
    """One run (:func:`prism.runs.load_run`), or several as an ensemble: the first run's TrainedRun (its config,
    strategy, precision and inference settings) holding an :class:`~prism.evaluation.ensemble.Ensemble` of every
    run's model.

    Raises:
        DataError: a run whose modalities, classes or label map differ from the first run's (names both runs).
    """
    import dataclasses

    from ..errors import DataError
    from ..evaluation.ensemble import Ensemble
    from ..runs import load_run

    runs = [load_run(d, cache=cache, device=device, overrides=overrides) for d in run_dirs]
    first = runs[0]
    for folder, run in zip(run_dirs[1:], runs[1:], strict=True):
        for what, ours, theirs in (("modalities", first.modalities, run.modalities),
                                   ("classes", first.labels, run.labels),
                                   ("label map", first.label_map, run.label_map)):
            if ours != theirs:
                raise DataError(f"{folder}: its {what} {theirs} differ from {run_dirs[0]}'s {ours}; an ensemble's "
                                "runs must share modalities, classes and label map")
    if len(runs) == 1:
        return first
    return dataclasses.replace(first, model=Ensemble([r.model for r in runs]).eval())


def recorded_layout(run: TrainedRun) -> Any:
    """The DatasetLayout the run's cache was built from (None for synthetic caches)."""
    from ..data_tools.predict_io import layout_from_record

    record = run.preprocessing.get("layout")
    return layout_from_record(record, run.label_map) if isinstance(record, dict) else None


def input_settings(run: TrainedRun) -> Any:
    """PreprocessSettings (crop size, margin, spacing) the run's cache was built with, for preprocessing new cases."""
    from ..data_tools.preprocess import settings_for_inputs

    return settings_for_inputs(run.preprocessing)


def predict_probabilities(run: TrainedRun, case: Any) -> Any:
    """Class probabilities float32 ``[K, d, h, w]`` (numpy, on the crop) of a PreprocessedImage, using exactly the
    modalities present in the case, with the run's evaluation options (``eval``: window, overlap, test-time
    augmentation; ``EvalOptions.from_config``)."""
    import torch

    from ..evaluation.inference import predict_logits
    from ..evaluation.options import EvalOptions

    options = EvalOptions.from_config(run.config.eval, channels_last=run.config.train.channels_last)
    mask = torch.tensor([case.present], dtype=torch.bool)
    logits = predict_logits(run.model, torch.from_numpy(case.image), mask, device=run.device, amp_dtype=run.amp_dtype,
                            options=options)
    return torch.softmax(logits[0], dim=0).cpu().numpy()


def predict_image(run: TrainedRun, case: Any) -> Any:
    """Stored-class label map uint8 ``[d, h, w]`` (numpy, on the crop): the argmax of
    :func:`predict_probabilities`."""
    return predict_probabilities(run, case).argmax(0).astype("uint8")


def plan_cases(run: TrainedRun, input_dir: str | Path, layout: str = "auto") -> tuple[Any, list[Any], dict[int, int]]:
    """(input layout, cases, stored -> raw label map) after checking every case's files; nothing is written."""
    from ..data_tools.predict_io import (
        check_input_geometry,
        discover_input_cases,
        inverse_label_map,
        resolve_input_layout,
    )
    from ..errors import DataError

    input_dir = Path(input_dir)
    spec = resolve_input_layout(layout, input_dir, recorded_layout(run))
    unknown = [m for m in spec.modalities if m not in run.modalities]
    if unknown:
        raise DataError(f"{input_dir}: modalities {unknown} of layout '{spec.name}' are not the model's "
                        f"{list(run.modalities)}")
    bad = sorted(v for v in set(spec.label_map.values()) if not 0 <= v < run.num_classes)
    if bad:
        raise DataError(f"layout '{spec.name}': label map targets {bad} are not classes of the model "
                        f"(0..{run.num_classes - 1})")
    cases = discover_input_cases(input_dir, spec)
    for case in cases:
        check_input_geometry(case)
    return spec, cases, inverse_label_map(spec.label_map, run.num_classes)


def adapt_run(run: TrainedRun, support_dir: str | Path, *, layout: str = "auto", steps: int | None = None) -> int:
    """Adapt ``run.model`` to labelled support cases (BraTS-style folders with a label file) with the run's own
    rule (``Strategy.adapt``: MAML's inner loop, Meta-SGD's rates, fine-tuning for standard runs), in place of the
    model held by ``run``; the run folder is not touched. Returns the number of support cases.

    The adaptation loss is :func:`prism.adapt.adaptation_loss` (cross-entropy + soft Dice on the fused logits);
    each support case is one batch with the modalities it has; the steps run in the run's precision.
    """
    import dataclasses

    import torch

    from ..adapt import adaptation_loss, adapted_model
    from ..batch import Batch
    from ..data_tools.layouts import discover_cases
    from ..data_tools.predict_io import input_case_folders, resolve_input_layout
    from ..data_tools.preprocess import preprocess_case
    from ..errors import ConfigError, DataError
    from ..evaluation.adaptation import pad_to_divisor

    if steps is not None and steps < 0:
        raise ConfigError(f"--adapt-steps: must be >= 0, got {steps}")
    support_dir = Path(support_dir)
    spec = resolve_input_layout(layout, support_dir, recorded_layout(run))
    lacking = [m for m in run.modalities if m not in spec.files]
    if lacking:
        raise DataError(f"{support_dir}: layout '{spec.name}' has no files for the model's modalities {lacking}")
    spec = dataclasses.replace(spec, files={m: spec.files[m] for m in run.modalities})  # the model's channel order
    raw = discover_cases(support_dir, spec, require_label=True, folders=input_case_folders(support_dir))
    settings = input_settings(run)
    batches = []
    for case in raw:
        pre = preprocess_case(case, spec, settings)
        image, label = pad_to_divisor(torch.from_numpy(pre.image), torch.from_numpy(pre.label.astype("int64")),
                                      run.model.size_divisor)
        present = torch.tensor([pre.present])
        batches.append(Batch(image=image[None], label=label[None], mask=present, availability=present,
                             case_ids=[case.case_id]).to(run.device))
    run.model = adapted_model(run.strategy.adapt, run.model, batches, adaptation_loss, amp_dtype=run.amp_dtype,
                              steps=steps)
    return len(batches)


def predict_folder(run: TrainedRun, input_dir: str | Path, out_dir: str | Path, *, layout: str = "auto",
                   on_case: Callable[[str, Path, Sequence[str]], None] | None = None,
                   save_probabilities: bool = False) -> list[Path]:
    """Predict every case under ``input_dir`` into ``out_dir/<case>.nii.gz`` (original space, raw labels).

    All cases are found and their headers checked before ``out_dir`` is created. ``on_case(case_id, path,
    modalities_used)`` is called after each file is written. ``save_probabilities`` also writes
    ``out_dir/<case>.npz`` (:func:`prism.data_tools.predict_io.write_probabilities`; the label map is its argmax).
    """
    from ..data_tools.predict_io import write_label_map, write_probabilities
    from ..data_tools.preprocess import preprocess_image
    from ..errors import DataError

    _, cases, inverse = plan_cases(run, input_dir, layout)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(f"{out_dir}: exists and is not a folder")
    from ..atomic import ensure_folder

    ensure_folder(out_dir)
    settings = input_settings(run)
    written = []
    for raw in cases:
        case = preprocess_image(raw, run.modalities, settings)
        used = [m for m, p in zip(run.modalities, case.present, strict=True) if p]
        probabilities = predict_probabilities(run, case)
        if save_probabilities:
            write_probabilities(out_dir / f"{raw.case_id}.npz", probabilities, case, inverse, used)
        path = write_label_map(out_dir / f"{raw.case_id}.nii.gz", probabilities.argmax(0).astype("uint8"), case,
                               inverse)
        written.append(path)
        if on_case is not None:
            on_case(raw.case_id, path, used)
    return written


def parser() -> argparse.ArgumentParser:
    from .evaluate import add_inference_flags

    p = OneLineParser(
        prog="prism-predict", description="Segment new cases with a trained run (or an ensemble of runs): one NIfTI "
        "label map per case, aligned with its inputs, from whatever modalities the case has.", epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", type=Path, nargs="+", metavar="MODEL",
                   help="a run folder written by prism-train; several: an ensemble (mean probabilities)")
    p.add_argument("input_dir", type=Path, metavar="INPUT_DIR", help="case folders (or one case folder)")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="OUT_DIR", help="folder for <case>.nii.gz")
    p.add_argument("--layout", default="auto",
                   help="input file naming: brats2020, brats2023, a dataset description file, or auto (default)")
    p.add_argument("--data", type=Path, metavar="CACHE", help="the run's cache, if it moved (modalities, labels)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="= train.device")
    add_inference_flags(p)
    p.add_argument("--save-probabilities", action="store_true",
                   help="also write OUT_DIR/<case>.npz: class probabilities in the original space (see below)")
    p.add_argument("--adapt", type=Path, metavar="SUPPORT_DIR",
                   help="first adapt the model to these labelled cases (case folders with a label file) with the "
                   "run's own adaptation rule (MAML: its inner loop; Meta-SGD: its learned rates; standard: "
                   "fine-tuning); the run folder is not changed")
    p.add_argument("--adapt-steps", type=int, metavar="K",
                   help="adaptation steps (default: the strategy's own, e.g. MAML's inner_steps)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return run_command("prism-predict", lambda: _predict(args))


def _predict(args: argparse.Namespace) -> int:
    from ..errors import ConfigError
    from ..evaluation.options import eval_config_with
    from .evaluate import inference_changes

    if args.adapt is not None and len(args.models) > 1:
        raise ConfigError("--adapt: adapts one run; give a single MODEL")
    run = load_runs(args.models, cache=args.data, device=args.device)
    section = eval_config_with(run.config.eval, inference_changes(args))  # the run's eval section, flags over it
    run.config = run.config.model_copy(update={"eval": section})
    if section.window is not None:
        from ..evaluation.inference import check_window

        check_window(run.model, section.window)  # before any case is read
    console = stdout_console()
    if args.adapt is not None:
        n = adapt_run(run, args.adapt, layout=args.layout, steps=args.adapt_steps)
        console.print(f"adapted to {n} support case(s) from {args.adapt} with strategy "
                      f"'{run.config.strategy.name}'s rule")
    elif args.adapt_steps is not None:
        raise ConfigError("--adapt-steps: needs --adapt SUPPORT_DIR")

    def report(case_id: str, path: Path, used: Sequence[str]) -> None:
        console.print(f"{case_id}: {path}  ({', '.join(used)})")

    if len(args.models) > 1:
        console.print(f"ensemble of {len(args.models)} runs (mean probabilities)")
    written = predict_folder(run, args.input_dir, args.output, layout=args.layout, on_case=report,
                             save_probabilities=args.save_probabilities)
    extra = " and class probabilities (.npz)" if args.save_probabilities else ""
    console.print(f"wrote {len(written)} label maps{extra} to {args.output}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
