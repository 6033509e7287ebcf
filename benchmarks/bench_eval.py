"""Benchmark: evaluating all 15 modality combinations of one case, batched vs one loop per combination.

Both sides do the same work, in the same run, on the same case and model: sliding-window inference (MONAI,
Gaussian blending) and the metrics (Dice, HD95). "batched" runs every window once under all 15 masks (batch
15 x sw_batch_size) and measures all combinations at once; "loop" sweeps the volume once per combination and
measures it alone. Prints the median times and the speed-up (target: >= 3x on a GPU).

    python benchmarks/bench_eval.py                       # CPU-sized defaults
    python benchmarks/bench_eval.py --device cuda --shape 128 160 128 --window 96 96 96 --width 16
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

from prism.data_tools.synthetic import SynthSettings, make_case
from prism.modalities import BRATS_MODALITIES, combination_masks
from prism.registry import create_backbone

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import time_evaluation  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--shape", type=int, nargs=3, default=[32, 32, 32])
    ap.add_argument("--window", type=int, nargs=3, default=[16, 16, 16])
    ap.add_argument("--overlap", type=float, default=0.5)
    ap.add_argument("--sw-batch-size", type=int, default=2)
    ap.add_argument("--width", type=int, default=8)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-hd95", action="store_true")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    amp = torch.bfloat16 if device.type == "cuda" else None
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    image, label, _ = make_case(0, SynthSettings(shape=tuple(args.shape), seed=0))
    image, label = torch.from_numpy(image), torch.from_numpy(label).long().to(device)
    torch.manual_seed(0)
    model = create_backbone("multi_unet", BRATS_MODALITIES, 4, width=args.width, depth=args.depth).to(device).eval()
    masks = combination_masks(BRATS_MODALITIES)
    common = dict(device=device, amp=amp, window=tuple(args.window), overlap=args.overlap,
                  sw_batch_size=args.sw_batch_size, with_hd95=not args.no_hd95)

    timed = time_evaluation(model, image, label, masks, repeats=args.repeats, **common)
    results = {"loop (1 combination per sweep)": timed["loop"],
               "batched (15 combinations per sweep)": timed["batched"]}
    print(f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}), "
          f"torch threads {torch.get_num_threads()}, amp {amp}")
    print(f"case {tuple(args.shape)}, window {tuple(args.window)}, overlap {args.overlap}, sw_batch_size "
          f"{args.sw_batch_size}, multi_unet width {args.width} depth {args.depth}, hd95 {not args.no_hd95}")
    for name, times in results.items():
        print(f"  {name:38s} median {statistics.median(times) * 1000:9.1f} ms  best {min(times) * 1000:9.1f} ms  "
              "(runs: " + ", ".join(f"{t * 1000:.1f}" for t in times) + ")")
    loop, batched = results.values()
    print(f"  speed-up batched vs loop: {statistics.median(loop) / statistics.median(batched):.2f}x median, "
          f"{min(loop) / min(batched):.2f}x best (target >= 3x)")


if __name__ == "__main__":
    main()
