"""prism-export: a trained run as a deployment artifact (ONNX or torch.export) for one fixed modality set."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import OneLineParser, run_command, stdout_console

EPILOG = """\
examples:
  prism-export runs/standard-20261122-101500 --format onnx -o brats.onnx
  prism-export RUN --format torch-export --modalities FLAIR T1ce -o flair_t1ce.pt2

The artifact takes 'image' float32 [B, P, D, H, W]: the P modalities of --modalities (default: all of the run's)
in the run's channel order, brain-cropped and z-scored as prism-data preprocess does; the absent modalities are
masked out inside (the mask is baked in). It returns 'logits' float32 [B, K, D, H, W]. B is any size >= 1 and
D, H, W any multiples of the backbone's size divisor, at least twice it. OUT.json beside it describes the input,
output, classes and label values, and holds the parity check: the largest absolute logit difference between the
artifact (run on the CPU: onnxruntime for ONNX, torch.export.load for torch-export) and the eager model on random
inputs, with the tolerance it passed. An artifact that fails the check is not written (exit code 1).
ONNX needs the optional extra: pip install 'prism-seg[export]'. The ExportedProgram loads with
torch.export.load(OUT).module().
"""


def parser() -> argparse.ArgumentParser:
    from ..export import FORMATS

    p = OneLineParser(
        prog="prism-export", description="Export a trained run's model for one fixed set of modalities as an ONNX "
        "model or a torch.export ExportedProgram, with a parity check against the eager model written beside it.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", type=Path, metavar="RUN", help="a run folder written by prism-train")
    p.add_argument("--format", required=True, choices=tuple(FORMATS), dest="fmt",
                   help="onnx (needs the 'export' extra) or torch-export (an ExportedProgram, torch.export.save)")
    p.add_argument("--modalities", nargs="+", metavar="NAME",
                   help="the modalities the artifact takes, any case (default: all of the run's)")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="OUT",
                   help="the artifact file (.onnx or .pt2); OUT.json is written beside it")
    p.add_argument("--data", type=Path, metavar="CACHE", help="the run's cache, if it moved (modalities, labels)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return run_command("prism-export", lambda: _export(args))


def _export(args: argparse.Namespace) -> int:
    from ..data_tools.predict_io import inverse_label_map
    from ..errors import DataError
    from ..export import card_path, export_backbone, require_onnx, resolve_modalities
    from ..runs import load_run

    if args.fmt == "onnx":
        require_onnx()
    if args.output.is_dir():
        raise DataError(f"{args.output}: is a folder; -o names the artifact file")
    run = load_run(args.run_dir, cache=args.data, device="cpu")
    present = resolve_modalities(args.modalities, run.modalities)
    card = export_backbone(run.model, args.output, fmt=args.fmt, modalities=present, classes=run.labels,
                           label_values=inverse_label_map(run.label_map, run.num_classes), source=str(args.run_dir))
    parity = card.parity
    stdout_console().print(
        f"{args.output}: {args.fmt}, input [B, {len(present)}, D, H, W] ({', '.join(present)}), logits "
        f"[B, {run.num_classes}, D, H, W]; parity max |diff| {parity['max_abs_diff']:.2e} <= tolerance "
        f"{parity['tolerance']:.2e} ({card_path(args.output)})")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
