"""The GPU suite: every GPU speed figure in one command (about 5 minutes on an H100), one JSON line + a table.

    python benchmarks/gpu_suite.py              # CUDA: P1 sizes (80^3, batch 1)
    python benchmarks/gpu_suite.py --smoke      # the same code on a CPU at tiny sizes (CI keeps it from rotting)

Rows (each built by the Trainer as prism-train builds it, on synthetic phantoms):
- P1 step: rfnet width 8, losses prism (beta 0.5, delta 0.1) + rfnet_sep, 80^3, batch 1: fp32, bf16, bf16 with
  ``train.compile: step`` (forward, losses, backward compiled), bf16 with ``train.cuda_graphs`` (or the reason it
  is refused); median ms per step and peak GiB. PASSION's step: 533 ms fp32, 445-482 ms bf16, 12.4 GiB.
- Compile time of that compiled step: the first step's wall time less a compiled step's median (tracing and code
  generation), and the graphs dynamo compiled over all its steps (1: no recompilation, no graph break).
- multi_unet + prism, bf16.
- Meta-Drop, MAML first order and second order (K=1, 2 tasks) relative to the standard bf16 step.
- DataLoader patches/s (PatchDataset, 4 workers) at 80^3 and 128^3 against the standard step's rate.
- One case's 15-combination evaluation (sliding window, Dice), batched against one sweep per combination.
Timed sections run one after another in one process; a shared GPU or a busy host slows them alike only roughly.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import (  # noqa: E402
    build_trainer,
    close_trainer,
    loader_rate,
    sync,
    synthetic_cache,
    time_evaluation,
    time_steps,
)

P1_LOSSES = "losses=[{name: prism, options: {beta: 0.5, delta: 0.1}}, {name: rfnet_sep}]"
PASSION = {"fp32_ms": 533.0, "bf16_ms": 445.0, "peak_gib": 12.4}


def suite_sizes(smoke: bool) -> dict[str, Any]:
    if smoke:
        return {"patch": 16, "width": 2, "warmup": 1, "steps": 1, "meta_steps": 1, "loader_patches": (8, 16),
                "loader_workers": 1, "loader_batches": 2, "volume": 16, "eval_shape": (16, 16, 24),
                "eval_window": (16, 16, 16), "eval_width": 2, "compile_backend": "eager"}
    return {"patch": 80, "width": 8, "warmup": 3, "steps": 10, "meta_steps": 5, "loader_patches": (80, 128),
            "loader_workers": 4, "loader_batches": 20, "volume": 144, "eval_shape": (128, 160, 128),
            "eval_window": (96, 96, 96), "eval_width": 8, "compile_backend": "inductor"}


def _step_row(cache: Path, run: Path, overrides: list[str], sz: dict[str, Any], device: str, *,
              steps: int | None = None, compile_backend: str | None = None) -> dict[str, Any]:
    """Median step time of one configuration; ``refused`` (a ConfigError: why) or ``error`` (what failed) instead,
    so one failing row does not cost the others."""
    from prism.engine.compiled import compiled_forward_loss
    from prism.errors import ConfigError

    trainer = None
    try:
        trainer = build_trainer(overrides, cache, run, size=sz["patch"], device=device, steps=1000)
        first_s = None
        if compile_backend is not None:  # what train.compile=step installs, with the backend chosen here
            torch._dynamo.reset()
            torch._dynamo.utils.counters.clear()
            trainer.ctx.forward_loss = compiled_forward_loss(trainer.ctx, backend=compile_backend)
            t_first = time.perf_counter()
            trainer.strategy.step(trainer.ctx)  # traces and compiles
            sync(trainer.ctx.device)
            first_s = time.perf_counter() - t_first
        t0 = time.perf_counter()
        timing = time_steps(trainer, warmup=sz["warmup"], steps=steps or sz["steps"])
        row: dict[str, Any] = timing.as_dict()
        row["total_s"] = round(time.perf_counter() - t0, 2)
        if first_s is not None:
            row["compile_s"] = round(first_s - timing.median_s, 2)
            row["graphs"] = int(torch._dynamo.utils.counters["stats"]["unique_graphs"])
        return row
    except ConfigError as exc:
        return {"refused": str(exc)}
    except Exception as exc:  # noqa: BLE001 - a benchmark reports the failure and goes on
        return {"error": f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:300]}"}
    finally:
        if trainer is not None:
            close_trainer(trainer)
        if device == "cuda":
            torch.cuda.empty_cache()


def _progress(name: str, row: Any) -> None:
    print(f"[gpu_suite] {name}: {json.dumps(row)}", file=sys.stderr, flush=True)


ROWS = ("fp32", "bf16", "cuda_graphs", "multi_unet", "meta_drop", "maml_first_order", "maml_second_order", "loader",
        "compiled", "eval")


def run_suite(smoke: bool, device: str, with_compile: bool = True, skip: frozenset[str] = frozenset()
              ) -> dict[str, Any]:
    """Every row of the suite (see the module docstring) as one JSON-ready dict.

    Rows run cheapest first and the compiled step (minutes of compilation) and the evaluation last, each reported
    on stderr as it finishes, so a run cut short still shows what it measured. ``skip``: row names (``ROWS``).
    """
    sz = suite_sizes(smoke)
    torch.manual_seed(0)
    if device == "cuda":
        torch.backends.cudnn.benchmark = True
    out: dict[str, Any] = {"suite": "gpu", "smoke": smoke, "device": _device_name(device), "torch": torch.__version__,
                           "python": platform.python_version(), "patch": sz["patch"], "passion": PASSION}
    rfnet = ["model.name=rfnet", f"model.options={{width: {sz['width']}}}", P1_LOSSES]
    skipped = {"refused": "skipped (--skip)"}
    p1: dict[str, Any] = {}
    strategies: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="prism-gpu-suite-") as tmp:
        tmp_path = Path(tmp)
        t0 = time.perf_counter()
        cache = synthetic_cache(tmp_path / "suite.h5", sz["volume"], cases=8)
        out["cache_s"] = round(time.perf_counter() - t0, 2)
        _progress("cache_s", out["cache_s"])

        def step(name: str, overrides: list[str], **kw: Any) -> dict[str, Any]:
            row = skipped if name in skip else _step_row(cache, tmp_path / name, overrides, sz, device, **kw)
            _progress(name, row)
            return row

        p1["fp32"] = step("fp32", [*rfnet, "train.amp=none"])
        p1["bf16"] = step("bf16", [*rfnet, "train.amp=bf16"])
        p1["cuda_graphs"] = step("cuda_graphs", [*rfnet, "train.amp=bf16", "train.cuda_graphs=true"])
        out["multi_unet"] = step("multi_unet", [
            "model.name=multi_unet", f"model.options={{width: {sz['width']}}}",
            "losses=[{name: prism, options: {beta: 0.5, delta: 0.1}}]", "train.amp=bf16"])
        strategies["standard"] = p1["bf16"]
        for name, options in (("meta_drop", ["strategy.name=meta_drop"]),
                              ("maml_first_order", ["strategy.name=maml", "strategy.options={first_order: true, "
                                                    "inner_steps: 1, tasks_per_step: 2}"]),
                              ("maml_second_order", ["strategy.name=maml", "strategy.options={first_order: false, "
                                                     "inner_steps: 1, tasks_per_step: 2}"])):
            row = step(name, [*rfnet, "train.amp=bf16", *options], steps=sz["meta_steps"])
            if "ms" in row and "ms" in p1["bf16"]:
                row["x_standard"] = round(row["ms"] / p1["bf16"]["ms"], 2)
            strategies[name] = row
        out["strategies"] = strategies
        step_rate = 1e3 / p1["bf16"]["ms"] if "ms" in p1["bf16"] else None
        ids = [f"synth_{i:04d}" for i in range(8)]
        loader: dict[str, Any] = {}
        if "loader" not in skip:
            for patch in sz["loader_patches"]:
                rate = loader_rate(cache, ids, patch, sz["loader_workers"], sz["loader_batches"])
                loader[str(patch)] = {"workers": sz["loader_workers"], "patches_per_s": round(rate, 2),
                                      "x_step_rate_batch1": round(rate / step_rate, 2) if step_rate else None}
        out["loader"] = loader
        _progress("loader", loader)
        if not with_compile:
            p1["compiled"] = {"refused": "not run (--smoke without --with-compile: compiling takes ~20 s on a CPU)"}
        else:
            p1["compiled"] = step("compiled", [*rfnet, "train.amp=bf16"], compile_backend=sz["compile_backend"])
        out["p1"] = {k: p1[k] for k in ("fp32", "bf16", "compiled", "cuda_graphs")}
    out["eval"] = skipped if "eval" in skip else _eval_row(sz, device)
    _progress("eval", out["eval"])
    return out


def _eval_row(sz: dict[str, Any], device_name: str) -> dict[str, Any]:
    from prism.data_tools.synthetic import SynthSettings, make_case
    from prism.modalities import BRATS_MODALITIES, combination_masks
    from prism.registry import create_backbone

    device = torch.device(device_name)
    image, label, _ = make_case(0, SynthSettings(shape=sz["eval_shape"], seed=0))
    image, label = torch.from_numpy(image), torch.from_numpy(label).long().to(device)
    torch.manual_seed(0)
    model = create_backbone("rfnet", BRATS_MODALITIES, 4, width=sz["eval_width"]).to(device).eval()
    times = time_evaluation(model, image, label, combination_masks(BRATS_MODALITIES), repeats=1, device=device,
                            amp=torch.bfloat16 if device.type == "cuda" else None, window=sz["eval_window"],
                            overlap=0.5, sw_batch_size=2, with_hd95=False)
    loop, batched = min(times["loop"]), min(times["batched"])
    return {"model": "rfnet", "shape": list(sz["eval_shape"]), "window": list(sz["eval_window"]), "hd95": False,
            "loop_ms": round(loop * 1e3, 1), "batched_ms": round(batched * 1e3, 1),
            "speedup": round(loop / batched, 2)}


def _device_name(device: str) -> str:
    return torch.cuda.get_device_name(0) if device == "cuda" else f"cpu ({torch.get_num_threads()} threads)"


def _cell(row: dict[str, Any]) -> str:
    if "refused" in row:
        return "refused: " + row["refused"]
    if "error" in row:
        return "ERROR: " + row["error"]
    extra = f"  x{row['x_standard']} standard" if "x_standard" in row else ""
    peak = "" if row["peak_gib"] is None else f"  {row['peak_gib']:.2f} GiB"
    return f"{row['ms']:9.1f} ms{peak}{extra}"


def print_table(out: dict[str, Any]) -> None:
    print(f"prism GPU suite: {out['device']}, torch {out['torch']}, patch {out['patch']}^3, batch 1"
          + (" (--smoke: tiny CPU sizes, figures mean nothing)" if out["smoke"] else ""))
    rows = [(f"P1 rfnet {k}", v) for k, v in out["p1"].items()] + [("multi_unet + prism bf16", out["multi_unet"])]
    rows += [(f"strategy {k}", v) for k, v in out["strategies"].items() if k != "standard"]
    for name, row in rows:
        print(f"  {name:32s} {_cell(row)}")
    compiled = out["p1"]["compiled"]
    if "compile_s" in compiled:
        print(f"  {'P1 rfnet compile time':32s} {compiled['compile_s']:9.1f} s   {compiled['graphs']} graph(s) over "
              "all its steps")
    for patch, row in out["loader"].items():
        print(f"  DataLoader {patch}^3, {row['workers']} workers   {row['patches_per_s']:9.1f} patches/s  "
              f"({row['x_step_rate_batch1']}x the bf16 step rate)")
    e = out["eval"]
    if "loop_ms" in e:
        print(f"  15-combination eval {tuple(e['shape'])}  loop {e['loop_ms']:.1f} ms, batched {e['batched_ms']:.1f} "
              f"ms, {e['speedup']}x")
    print(f"  PASSION step: {PASSION['fp32_ms']} ms fp32, {PASSION['bf16_ms']} ms bf16, {PASSION['peak_gib']} GiB")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU (checks the code, not the speed)")
    ap.add_argument("--device", default=None, help="default: cuda, or cpu with --smoke")
    ap.add_argument("--skip", nargs="*", default=[], choices=ROWS, help="rows to leave out")
    ap.add_argument("--with-compile", action="store_true", help="with --smoke: also run the compiled step "
                    "(torch.compile's eager backend on a CPU)")
    args = ap.parse_args(argv)
    device = args.device or ("cpu" if args.smoke else "cuda")
    if device == "cuda" and not torch.cuda.is_available():
        print("gpu_suite: no CUDA device; run with --smoke for the CPU check", file=sys.stderr)
        raise SystemExit(2)
    if args.smoke:
        torch.set_num_threads(1)
    out = run_suite(args.smoke, device, with_compile=not args.smoke or args.with_compile, skip=frozenset(args.skip))
    print_table(out)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
