"""Pieces the benchmark scripts share: a synthetic cache, a Trainer built as prism-train builds it, timed training
steps, DataLoader throughput and one case's 15-combination evaluation. Scripts import this from their folder."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch


def sync(device: torch.device) -> None:
    """Wait for the device (CUDA work is asynchronous)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def synthetic_cache(path: Path, size: int | tuple[int, int, int], cases: int = 8, seed: int = 0) -> Path:
    """Write ``cases`` synthetic phantoms of ``size`` voxels into a prism cache at ``path`` (train/test splits)."""
    from prism.data_tools.synthetic import SynthSettings, write_synthetic_cache

    shape = (size, size, size) if isinstance(size, int) else tuple(size)
    write_synthetic_cache(str(path), SynthSettings(cases=cases, shape=shape, seed=seed))
    return path


def build_trainer(overrides: list[str], cache: Path, run_dir: Path, *, size: int, batch: int = 1,
                  device: str = "cpu", steps: int = 10) -> Any:
    """A ``Trainer`` built from ``overrides`` exactly as ``prism-train`` builds it (``size``^3 patches, batch
    ``batch``, no DataLoader workers, no checkpoints or logs during the benchmark)."""
    from prism.config import build_config
    from prism.engine.trainer import Trainer

    cfg = build_config(None, [
        f"data.patch_size=[{size},{size},{size}]", f"data.batch_size={batch}", "data.num_workers=0",
        f"train.device={device}", "train.loggers=[csv]", f"train.steps={steps}",
        "train.checkpoint_every=100000", "train.log_every=100000", *overrides,
    ])
    return Trainer(cfg, run_dir, cache_path=cache)


def close_trainer(trainer: Any) -> None:
    trainer.ctx.streams.close()
    trainer.close()


@dataclass
class StepTiming:
    median_s: float
    peak_gib: float  # NaN off CUDA

    def as_dict(self) -> dict[str, float | None]:
        """``{"ms", "peak_gib"}`` (``peak_gib`` None off CUDA, so the dict is strict JSON)."""
        peak = None if self.peak_gib != self.peak_gib else round(self.peak_gib, 3)
        return {"ms": round(self.median_s * 1e3, 3), "peak_gib": peak}


def time_steps(trainer: Any, *, warmup: int, steps: int) -> StepTiming:
    """Median wall time of ``steps`` calls of ``strategy.step`` after ``warmup`` untimed ones, and peak memory."""
    ctx = trainer.ctx
    ctx.model.train()
    for _ in range(warmup):
        trainer.strategy.step(ctx)
    sync(ctx.device)
    if ctx.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(ctx.device)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        trainer.strategy.step(ctx)
        sync(ctx.device)
        times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated(ctx.device) / 2**30 if ctx.device.type == "cuda" else float("nan")
    return StepTiming(statistics.median(times), peak)


def loader_rate(cache: Path, case_ids: list[str], patch: int, workers: int, batches: int, batch_size: int = 2
                ) -> float:
    """Patches per second a DataLoader over ``PatchDataset`` delivers (``workers`` processes, after one batch)."""
    from torch.utils.data import DataLoader

    from prism.data.cache_reader import CacheReader
    from prism.data.patches import PatchDataset, RankSampler, collate_batch

    ds = PatchDataset(CacheReader(cache), case_ids, (patch, patch, patch), seed=0)
    dl = DataLoader(ds, batch_size=batch_size, sampler=RankSampler(0, batch_size), collate_fn=collate_batch,
                    num_workers=workers, prefetch_factor=2 if workers else None)
    it = iter(dl)
    next(it)
    t0 = time.perf_counter()
    for _ in range(batches):
        next(it)
    rate = batch_size * batches / (time.perf_counter() - t0)
    del it
    return rate


def evaluate_case(model, image, label, masks, *, device, amp, window, overlap, sw_batch_size, combos_per_pass,
                  with_hd95):
    """Predict and score ``masks`` of one case, ``combos_per_pass`` combinations per sweep."""
    from prism.evaluation.hausdorff import hd95
    from prism.evaluation.inference import predict_logits
    from prism.evaluation.metrics import BRATS_REGIONS, mask_dice, region_masks
    from prism.evaluation.options import EvalOptions

    options = EvalOptions(window=window, overlap=overlap, sw_batch_size=sw_batch_size)
    for start in range(0, masks.shape[0], combos_per_pass):
        m = masks[start:start + combos_per_pass]
        logits = predict_logits(model, image, m, device=device, amp_dtype=amp, options=options)
        pred = logits.argmax(1)
        p, g = region_masks(pred, label, BRATS_REGIONS, 4)
        mask_dice(p, g)
        if with_hd95:
            hd95(p, g)
    sync(device)


def time_evaluation(model, image, label, masks, *, repeats: int, **common: Any) -> dict[str, list[float]]:
    """Seconds per case for the per-combination loop and the batched sweep (one warm-up each, same run)."""
    results = {}
    for name, per_pass in (("loop", 1), ("batched", masks.shape[0])):
        evaluate_case(model, image, label, masks, combos_per_pass=per_pass, **common)  # warm-up
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            evaluate_case(model, image, label, masks, combos_per_pass=per_pass, **common)
            times.append(time.perf_counter() - t0)
        results[name] = times
    return results
