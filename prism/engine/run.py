"""Build everything a training run is made of from a validated config: :func:`build_run` returns the parts.

The parts are what :class:`prism.engine.trainer.Trainer` loops over, and what a Python user may loop over
instead (``tutorials/own_loop.py``)::

    run = build_run(config, cache_path="brats.h5")
    for _ in range(100):
        parts = run.strategy.step(run.ctx)
        run.scheduler.step()
        if run.ema is not None:  # train.ema
            run.ema.update()
        run.ctx.step += 1
    run.close()

Every mistake is one line naming its config field, raised before anything is written.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ..backbone import Backbone
from ..config import Config
from ..data.augment import Augmentation
from ..data.cache_reader import CacheReader
from ..data.transforms import AugmentPipeline
from ..errors import ConfigError
from ..masking import MaskingPolicy
from ..registry import PluginEntry, blame, get_registry
from ..strategy import Strategy
from .builder import amp_dtype_for, build_optimizer, build_parts, select_device
from .checkpoint import load_initial_weights
from .compiled import install as install_compilation
from .context import TrainContext
from .distributed import DistInfo, init_from_env, wrap_ddp
from .ema import WeightAverage
from .losses import LossSet
from .rng import seed_globals
from .schedules import build_schedule
from .streams import BatchStreams


@dataclass
class Run:
    """The parts of a training run (see :func:`build_run`).

    Attributes:
        config: the config, with ``data.cache`` made absolute.
        device: where the model and batches live; ``dist``: the processes under torchrun.
        reader: the open cache; ``train_cases`` / ``val_cases``: the cases trained and validated on.
        model: the backbone (after the strategy's ``prepare_model``, on ``device``).
        losses, masking, strategy: the built plugins (``strategy_entry``: its registry entry, for blame).
        optimizer, scheduler: the configured optimizer and its LR schedule (``train.steps`` long,
            :func:`prism.engine.schedules.build_schedule`).
        streams: the named batch streams (DataLoaders) the context draws from.
        ctx: the :class:`TrainContext` strategies step with.
        ema: the moving average of the weights (``train.ema``; update it after every step), or None.
    """

    config: Config
    device: torch.device
    dist: DistInfo
    reader: CacheReader
    train_cases: tuple[str, ...]
    val_cases: tuple[str, ...]
    model: Backbone
    losses: LossSet
    masking: dict[str, MaskingPolicy]
    strategy: Strategy
    strategy_entry: PluginEntry
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    streams: BatchStreams
    ctx: TrainContext
    ema: WeightAverage | None = None

    def close(self) -> None:
        """Stop the streams' DataLoaders and release the cache handle."""
        self.streams.close()
        self.reader.close()


def absolute_cache(config: Config) -> Config:
    """``config`` with a relative ``data.cache`` made absolute (the copy in ``config.yaml`` then works from any
    directory: eval, predict and --resume)."""
    if config.data.cache is None or Path(config.data.cache).is_absolute():
        return config
    data = config.data.model_copy(update={"cache": Path(config.data.cache).resolve()})
    return config.model_copy(update={"data": data})


def configure_torch(config: Config) -> tuple[torch.device, DistInfo]:
    """Seed every generator, set threads and determinism, pick the device and join torchrun's process group."""
    t = config.train
    seed_globals(t.seed)
    if t.threads:
        torch.set_num_threads(t.threads)
    if t.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    device = select_device(t.device)
    dist = init_from_env(device.type)
    if dist.enabled and device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
        torch.cuda.set_device(device)
    if config.data.batch_size % dist.world:
        raise ConfigError(f"data.batch_size: the global batch {config.data.batch_size} must be divisible by "
                          f"the {dist.world} processes")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not t.deterministic
    return device, dist


def select_cases(config: Config, reader: CacheReader, check_splits: Sequence[str] = ()
                 ) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The training cases and the validation cases (empty without ``train.val_every``), checked against the
    cache: every split named exists and the patch fits the largest training volume."""
    train_split, val_split = config.training_splits()  # data.fold chooses a cross-validation fold's pair
    train_cases = tuple(reader.split(train_split))
    for name in check_splits:  # e.g. eval.split, checked before anything is trained or written
        reader.split(name)
    val_cases: tuple[str, ...] = ()
    if config.train.val_every:
        if val_split not in reader.splits:
            raise ConfigError(f"train.val_split: no split '{val_split}' in {reader.path} (has "
                              f"{sorted(reader.splits)}); make one (prism-data --val-fraction) or name "
                              "another split")
        val_cases = tuple(reader.split(val_split)[: config.train.val_cases])
    largest = [max(reader.info(c).shape[i] for c in train_cases) for i in range(3)]
    if any(p > s for p, s in zip(config.data.patch_size, largest, strict=True)):
        raise ConfigError(f"data.patch_size: {list(config.data.patch_size)} is larger than every training volume "
                          f"(largest {largest}) in {reader.path}")
    return train_cases, val_cases


def augmentation(config: Config) -> Augmentation | AugmentPipeline | None:
    """The training augmentation ``data.augment`` asks for: a transform list's :class:`AugmentPipeline`, or for
    ``light`` the rotation and intensity from ``data`` (None when both are off: flips are separate)."""
    d = config.data
    if d.augment != "light":
        return AugmentPipeline([step.model_dump() for step in d.augment])
    if not (d.rotate_degrees or d.intensity_scale or d.intensity_shift):
        return None
    return Augmentation(rotate_degrees=d.rotate_degrees, rotate_probability=d.rotate_probability,
                        intensity_scale=d.intensity_scale, intensity_shift=d.intensity_shift)


def build_streams(config: Config, reader: CacheReader, cases: Sequence[str], device: torch.device,
                  dist: DistInfo) -> BatchStreams:
    """The run's batch streams: patches of ``cases``, pinned for CUDA, this rank's share of each batch."""
    d = config.data
    workers = d.num_workers if d.num_workers is not None else (4 if device.type == "cuda" else 0)
    return BatchStreams(reader, cases, patch_size=d.patch_size, batch_size=d.batch_size, seed=config.train.seed,
                        foreground_fraction=d.foreground_fraction, flip=d.flip and d.augment == "light",
                        num_workers=workers, pin_memory=device.type == "cuda", rank=dist.rank, world=dist.world,
                        augment=augmentation(config))


def _prepared_model(config: Config, model: Backbone, strategy: Strategy, entry: PluginEntry,
                    device: torch.device) -> Backbone:
    if config.model.init_from is not None:
        load_initial_weights(model, config.model.init_from)
    with blame(entry, "preparing the model"):
        model = strategy.prepare_model(model)
    model = model.to(device)
    if config.train.channels_last:
        model = model.to(memory_format=torch.channels_last_3d)
    return model


def build_run(config: Config, *, cache_path: str | os.PathLike[str], check_splits: Sequence[str] = ()) -> Run:
    """Build a run's parts from ``config`` and the cache at ``cache_path``, seeded by ``train.seed``.

    Args:
        config: a validated config (``prism.config.build_config``).
        cache_path: the prism cache to train on.
        check_splits: further splits that must exist (e.g. ``eval.split``), checked before anything is built.

    Returns:
        The :class:`Run`: model, losses, masking policies, strategy (``setup`` done), optimizer, LR schedule,
        streams, the step context and the weights' moving average (``train.ema``).

    Raises:
        ConfigError, PluginError, CacheError, CheckpointError: a mistake in the config, a plugin or the cache
            (one line naming the field or file).
    """
    config = absolute_cache(config)
    device, dist = configure_torch(config)
    reader = CacheReader(cache_path)
    try:
        return _assemble(config, reader, device, dist, check_splits)
    except BaseException:
        reader.close()
        raise


def _assemble(config: Config, reader: CacheReader, device: torch.device, dist: DistInfo,
              check_splits: Sequence[str]) -> Run:
    train_cases, val_cases = select_cases(config, reader, check_splits)
    parts = build_parts(config, reader.modalities, max(reader.labels) + 1,
                        availability=[reader.info(c).availability for c in train_cases])
    entry = get_registry().get("strategy", config.strategy.name)
    if config.train.accumulate > 1 and not parts.strategy.accumulates:
        raise ConfigError(f"train.accumulate: strategy '{config.strategy.name}' does not accumulate gradients "
                          "over batches (standard and meta_drop do); leave train.accumulate at 1")
    model = _prepared_model(config, parts.model, parts.strategy, entry, device)
    parts.losses.to(device)  # the loss terms' tensors, before the first (compiled) step
    optimizer = build_optimizer(config, model)
    amp_dtype = amp_dtype_for(config, device)
    ddp = dist.enabled and parts.strategy.gradient_sync == "ddp"
    ctx = TrainContext(
        forward_module=wrap_ddp(model, parts.losses, device) if ddp else model, ddp=ddp,
        model=model, losses=parts.losses, optimizer=optimizer, scheduler=None,
        streams=build_streams(config, reader, train_cases, device, dist), masking=parts.masking,
        mask_generator=torch.Generator().manual_seed(config.train.seed + 1),
        device=device, amp_dtype=amp_dtype,
        scaler=torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None,
        grad_clip=config.optim.grad_clip, total_steps=config.train.steps,
        channels_last=config.train.channels_last, dist=dist, nonfinite=config.train.nonfinite,
        accumulate=config.train.accumulate,
    )
    install_compilation(config, parts.strategy, ctx)  # train.compile / train.cuda_graphs (or refused)
    with blame(entry, "setting up"):
        parts.strategy.setup(ctx)
    # after setup: a strategy may add parameter groups (Meta-SGD's learned inner learning rates)
    ctx.scheduler = build_schedule(optimizer, config.optim, config.train.steps)
    ema = WeightAverage(model, config.train.ema) if config.train.ema is not None else None
    return Run(config=config, device=device, dist=dist, reader=reader, train_cases=train_cases,
               val_cases=val_cases, model=model, losses=parts.losses, masking=parts.masking,
               strategy=parts.strategy, strategy_entry=entry, optimizer=optimizer, scheduler=ctx.scheduler,
               streams=ctx.streams, ctx=ctx, ema=ema)
