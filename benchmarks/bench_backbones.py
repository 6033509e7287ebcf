"""Backbone benchmark: parameters, FLOPs per training step (forward + backward) and time per step.

Every registered backbone (third-party ones included) is built with the same modalities and classes, and one
training step (forward, the loss, backward) is timed on the device at hand. FLOPs come from
``torch.utils.flop_counter.FlopCounterMode`` over the same step. The loss is the registered ``prism`` term
(fuse + uni + PRM + pixel-KL + prototype) where the backbone provides every part it needs, else ``fuse``.

    python benchmarks/bench_backbones.py                 # --quick: 80^3, batch 1
    python benchmarks/bench_backbones.py --size 80 128 --batch 1 2 --steps 5
    python benchmarks/bench_backbones.py --backbones rfnet --options width=8

Reference: PASSION's RFNet (width 8) with its full loss set takes 557 GFLOP per step at batch 1, 80^3.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count

from prism.batch import Batch
from prism.modalities import BRATS_MODALITIES, combination_masks
from prism.registry import create_backbone, create_loss, list_plugins

PASSION_RFNET_GFLOP = 557.0


def parse_options(items: list[str]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for item in items:
        key, _, value = item.partition("=")
        try:
            options[key] = int(value)
        except ValueError:
            options[key] = {"true": True, "false": False}.get(value.lower(), value)
    return options


def make_batch(batch: int, size: int, device: torch.device, num_classes: int) -> Batch:
    g = torch.Generator().manual_seed(0)
    m = len(BRATS_MODALITIES)
    mask = combination_masks(BRATS_MODALITIES)[torch.randint(0, 15, (batch,), generator=g)]
    image = torch.randn(batch, m, size, size, size, generator=g) * mask[:, :, None, None, None]
    label = torch.randint(0, num_classes, (batch, size, size, size), generator=g)
    return Batch(image=image, label=label, mask=mask, availability=torch.ones(batch, m, dtype=torch.bool)).to(device)


def pick_losses(model: torch.nn.Module, num_classes: int) -> tuple[str, list[Any]]:
    """The ``prism`` term (``fuse`` where the backbone lacks a part it needs) plus the backbone's own terms
    (its ``extra_loss_terms`` attribute, if any: RFNet's separate decoder, ShaSpec's auxiliary losses)."""
    provides = type(model).provides
    base = "prism" if "prism" in list_plugins("loss") else "fuse"
    loss = create_loss(base, BRATS_MODALITIES, num_classes)
    if not loss.needs <= provides:
        base, loss = "fuse", create_loss("fuse", BRATS_MODALITIES, num_classes)
    extra = [t for t in getattr(model, "extra_loss_terms", ()) if t in list_plugins("loss")]
    return "+".join([base, *extra]), [loss, *(create_loss(t, BRATS_MODALITIES, num_classes) for t in extra)]


def grouped_conv_backward_flop(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation, transposed,
                               _output_padding, _groups, output_mask, out_shape=None, **kwargs) -> int:
    """Convolution backward FLOPs that respect ``groups``: grad input and grad weight each cost one forward.

    torch's own formula counts the weight gradient of a grouped convolution as if it were dense (``groups``
    times too much), which would inflate the FLOPs of the grouped modality encoders.
    """
    forward = conv_flop_count(list(x_shape), list(w_shape), list(grad_out_shape), transposed)
    return forward * (int(bool(output_mask[0])) + int(bool(output_mask[1])))


def train_step(model: torch.nn.Module, losses: list[Any], batch: Batch) -> None:
    out = model(batch.image, batch.mask)
    sum(loss(out, batch).total for loss in losses).backward()


def count_flops(name: str, options: dict[str, Any], size: int, batch: int, num_classes: int) -> int:
    """FLOPs of one training step, on the meta device (shapes only, no compute)."""
    torch.manual_seed(0)
    model = create_backbone(name, BRATS_MODALITIES, num_classes, **options).to("meta").train()
    _, losses = pick_losses(model, num_classes)
    model.request_parts(frozenset().union(*(loss.needs for loss in losses)))
    counter = FlopCounterMode(display=False,
                              custom_mapping={torch.ops.aten.convolution_backward: grouped_conv_backward_flop})
    data = make_batch(batch, size, torch.device("cpu"), num_classes).to("meta")
    with counter:
        train_step(model, losses, data)
    return counter.get_total_flops()


def bench_one(name: str, options: dict[str, Any], size: int, batch: int, steps: int, device: torch.device,
              num_classes: int) -> dict[str, Any]:
    try:
        flops = count_flops(name, options, size, batch, num_classes)
    except Exception:  # a backbone that cannot run on the meta device: count on the real one
        flops = None
    torch.manual_seed(0)
    model = create_backbone(name, BRATS_MODALITIES, num_classes, **options).to(device).train()
    loss_name, losses = pick_losses(model, num_classes)
    model.request_parts(frozenset().union(*(loss.needs for loss in losses)))
    data = make_batch(batch, size, device, num_classes)
    params = sum(p.numel() for p in model.parameters())
    if flops is None:
        counter = FlopCounterMode(display=False,
                                  custom_mapping={torch.ops.aten.convolution_backward: grouped_conv_backward_flop})
        with counter:
            train_step(model, losses, data)
        flops = counter.get_total_flops()
    model.zero_grad(set_to_none=True)
    train_step(model, losses, data)  # warm-up
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        model.zero_grad(set_to_none=True)
        train_step(model, losses, data)
    sync()
    ms = (time.perf_counter() - start) / steps * 1e3
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    return {"backbone": name, "loss": loss_name, "size": size, "batch": batch, "params_m": params / 1e6,
            "gflop": flops / 1e9, "ms": ms, "peak_gib": peak}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", nargs="*", default=None, help="names (default: every registered one)")
    parser.add_argument("--size", nargs="*", type=int, default=[80], help="cubic patch sizes (80 128)")
    parser.add_argument("--batch", nargs="*", type=int, default=[1], help="batch sizes (1 2)")
    parser.add_argument("--steps", type=int, default=2, help="timed steps per configuration")
    parser.add_argument("--options", nargs="*", default=[], help="backbone options key=value, for every backbone")
    parser.add_argument("--classes", type=int, default=4)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    names = args.backbones or list_plugins("backbone")
    options = parse_options(args.options)
    print(f"device: {device}, torch {torch.__version__}; PASSION RFNet reference: {PASSION_RFNET_GFLOP:.0f} GFLOP "
          "(width 8, batch 1, 80^3)")
    header = f"{'backbone':<12} {'loss':<28} {'size':>5} {'batch':>5} {'params(M)':>10} {'GFLOP/step':>11} " \
             f"{'ms/step':>9} {'peak GiB':>9}"
    print(header)
    print("-" * len(header))
    for name in names:
        for size in args.size:
            for batch in args.batch:
                try:
                    r = bench_one(name, options, size, batch, args.steps, device, args.classes)
                except Exception as exc:  # one failing backbone must not hide the others' figures
                    print(f"{name:<12} failed: {type(exc).__name__}: {exc}")
                    continue
                print(f"{r['backbone']:<12} {r['loss']:<28} {r['size']:>5} {r['batch']:>5} {r['params_m']:>10.2f} "
                      f"{r['gflop']:>11.1f} {r['ms']:>9.1f} {r['peak_gib']:>9.2f}")
                if name == "rfnet" and size == 80 and batch == 1 and options.get("width", 8) == 8:
                    print(f"{'':<12} rfnet / PASSION RFNet FLOPs: {r['gflop'] / PASSION_RFNET_GFLOP:.3f}")


if __name__ == "__main__":
    main()
