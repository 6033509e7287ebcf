"""The training loop: build, (resume), step the strategy, log, checkpoint atomically, evaluate."""

from __future__ import annotations

import gc
import json
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from .. import __version__
from ..atomic import ensure_folder, remove_stale_temporaries, write_text_atomic
from ..config import Config, config_to_yaml
from ..data.augment import Augmentation
from ..data.cache_reader import CacheReader, dataset_changed_message
from ..errors import CheckpointError, ConfigError
from ..evaluation.adaptation import AdaptationSettings, evaluation_rule
from ..evaluation.options import EvalOptions
from ..evaluation.report import EvalReport, checkpoint_record, evaluate, write_report
from ..registry import blame, get_registry
from ..runs import BEST_NAME, CHECKPOINT_NAME
from .builder import amp_dtype_for, build_optimizer, build_parts, poly_schedule, select_device
from .checkpoint import load_checkpoint, load_initial_weights, mismatch_message, save_checkpoint
from .compiled import install as install_compilation
from .context import TrainContext, run_strategy_step
from .distributed import DistInfo, init_from_env, wrap_ddp
from .metrics_log import CsvLog, TensorBoardLog
from .run_lock import RunLock
from .signals import Preempted, StopSignals
from .streams import BatchStreams
from .validation import validation_dice


def run_info(config: Config) -> dict[str, Any]:
    """Versions of prism, torch and every plugin in use, for the run folder."""
    reg = get_registry()
    used = [("backbone", config.model.name), ("strategy", config.strategy.name),
            ("masking", config.masking.train.name), *[("masking", c.name) for c in config.masking.extra.values()],
            *[("loss", c.name) for c in config.losses]]
    plugins = []
    for kind, name in dict.fromkeys(used):
        e = reg.get(kind, name)
        plugins.append({"kind": kind, "name": name, "plugin": e.plugin, "distribution": e.distribution,
                        "version": e.version})
    return {"prism": __version__, "torch": torch.__version__, "python": platform.python_version(),
            "plugins": plugins}


def _rng_state(ctx: TrainContext) -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "mask": ctx.mask_generator.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def checkpoint_state(ctx: TrainContext, strategy_state: dict[str, Any], config: Config) -> dict[str, Any]:
    return {
        "step": ctx.step,
        "model": ctx.model.state_dict(),
        "optimizer": ctx.optimizer.state_dict(),
        "scheduler": ctx.scheduler.state_dict(),
        "scaler": ctx.scaler.state_dict() if ctx.scaler is not None else {},
        "strategy": strategy_state,
        "losses": ctx.losses.state_dict(),
        "masking": {role: p.state_dict() for role, p in ctx.masking.items()},
        "data": ctx.streams.state_dict(),
        "rng": _rng_state(ctx),
        "config": config_to_yaml(config),
        "prism_version": __version__,
    }


def augmentation(config: Config) -> Augmentation | None:
    """Rotation and intensity augmentation from ``data`` (None when all off: flips are separate)."""
    d = config.data
    if not (d.rotate_degrees or d.intensity_scale or d.intensity_shift):
        return None
    return Augmentation(rotate_degrees=d.rotate_degrees, rotate_probability=d.rotate_probability,
                        intensity_scale=d.intensity_scale, intensity_shift=d.intensity_shift)


def rate_text(samples_per_s: float) -> str:
    """``12.3 samples/s``, or ``4.2 s/sample`` when slower than one a second (never ``0.0 samples/s``)."""
    if samples_per_s >= 1:
        return f"{samples_per_s:.1f} samples/s"
    return f"{1 / samples_per_s:.1f} s/sample" if samples_per_s > 0 else "- samples/s"


def eta_text(seconds: float) -> str:
    """``1:02:03`` (hours:minutes:seconds) of the time left."""
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Trainer:
    """Owns one run: ``Trainer(config, run_dir).fit()``; ``resume=True`` continues from ``run_dir/last.pt``."""

    def __init__(self, config: Config, run_dir: Path, *, cache_path: Path, resume: bool = False,
                 console: Console | None = None, check_splits: tuple[str, ...] = ()) -> None:
        if config.data.cache is not None and not Path(config.data.cache).is_absolute():
            # recorded absolute in config.yaml: eval, predict and --resume work from any directory
            data = config.data.model_copy(update={"cache": Path(config.data.cache).resolve()})
            config = config.model_copy(update={"data": data})
        self.config = config
        self.run_dir = Path(run_dir)
        self.console = console or Console(stderr=True)
        self.resume = resume
        torch.manual_seed(config.train.seed)
        if config.train.threads:
            torch.set_num_threads(config.train.threads)
        if config.train.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        self.device = select_device(config.train.device)
        self.dist: DistInfo = init_from_env(self.device.type)
        if self.dist.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
            torch.cuda.set_device(self.device)
        if config.data.batch_size % self.dist.world:
            raise ConfigError(f"data.batch_size: the global batch {config.data.batch_size} must be divisible by "
                              f"the {self.dist.world} processes")
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = not config.train.deterministic
        self.reader = CacheReader(cache_path)
        train_split, val_split = config.training_splits()  # data.fold chooses a cross-validation fold's pair
        self.train_cases = self.reader.split(train_split)
        for name in check_splits:  # e.g. eval.split, checked before anything is trained or written
            self.reader.split(name)
        self.val_cases: tuple[str, ...] = ()
        if config.train.val_every:
            if val_split not in self.reader.splits:
                raise ConfigError(f"train.val_split: no split '{val_split}' in {cache_path} (has "
                                  f"{sorted(self.reader.splits)}); make one (prism-data --val-fraction) or name "
                                  "another split")
            self.val_cases = self.reader.split(val_split)[: config.train.val_cases]
        self.best_val = float("-inf")  # best validation mean Dice so far (best.pt holds its weights)
        largest = [max(self.reader.info(c).shape[i] for c in self.train_cases) for i in range(3)]
        if any(p > s for p, s in zip(config.data.patch_size, largest, strict=True)):
            raise ConfigError(f"data.patch_size: {list(config.data.patch_size)} is larger than every training volume "
                              f"(largest {largest}) in {cache_path}")
        num_classes = max(self.reader.labels) + 1
        parts = build_parts(config, self.reader.modalities, num_classes,
                            availability=[self.reader.info(c).availability for c in self.train_cases])
        self.strategy = parts.strategy
        self.strategy_entry = get_registry().get("strategy", config.strategy.name)
        if config.model.init_from is not None:
            load_initial_weights(parts.model, config.model.init_from)
        with blame(self.strategy_entry, "preparing the model"):
            model = self.strategy.prepare_model(parts.model)
        model = model.to(self.device)
        parts.losses.to(self.device)  # the loss terms' tensors, before the first (compiled) step
        if config.train.channels_last:
            model = model.to(memory_format=torch.channels_last_3d)
        optimizer = build_optimizer(config, model)
        amp_dtype = amp_dtype_for(config, self.device)
        workers = config.data.num_workers
        if workers is None:
            workers = 4 if self.device.type == "cuda" else 0
        streams = BatchStreams(
            self.reader, self.train_cases, patch_size=config.data.patch_size, batch_size=config.data.batch_size,
            seed=config.train.seed, foreground_fraction=config.data.foreground_fraction, flip=config.data.flip,
            num_workers=workers, pin_memory=self.device.type == "cuda", rank=self.dist.rank, world=self.dist.world,
            augment=augmentation(config),
        )
        ddp = self.dist.enabled and self.strategy.gradient_sync == "ddp"
        self.ctx = TrainContext(
            forward_module=wrap_ddp(model, parts.losses, self.device) if ddp else model, ddp=ddp,
            model=model, losses=parts.losses, optimizer=optimizer,
            scheduler=None,
            streams=streams, masking=parts.masking,
            mask_generator=torch.Generator().manual_seed(config.train.seed + 1),
            device=self.device, amp_dtype=amp_dtype,
            scaler=torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None,
            grad_clip=config.optim.grad_clip, total_steps=config.train.steps,
            channels_last=config.train.channels_last, dist=self.dist,
        )
        install_compilation(config, self.strategy, self.ctx)  # train.compile / train.cuda_graphs (or refused)
        with blame(self.strategy_entry, "setting up"):
            self.strategy.setup(self.ctx)
        # after setup: a strategy may add parameter groups (Meta-SGD's learned inner learning rates)
        self.ctx.scheduler = poly_schedule(optimizer, config.train.steps, config.optim.poly_power)
        if resume:
            checkpoint = self.run_dir / CHECKPOINT_NAME
            if checkpoint.is_file() or not (self.run_dir / "config.yaml").is_file():
                self._load(checkpoint)
            else:  # stopped before its first checkpoint: its config is all there is
                self.console.print(f"{checkpoint} not written yet: starting the run from step 0 with its config.yaml",
                                   highlight=False)
        # one writer per run folder, taken after every check (config, cache, checkpoint): a mistake writes nothing
        self.lock = RunLock(self.run_dir).acquire() if self.dist.is_main else None
        if self.dist.is_main:
            remove_stale_temporaries(self.run_dir)  # only files whose writer (pid on this host) is dead

    # ---- checkpoints -----------------------------------------------------------------------------------------
    def save(self, name: str = CHECKPOINT_NAME, **extra: Any) -> Path | None:
        """Write ``last.pt`` (or ``name``) atomically (rank 0 only: every rank holds the same state)."""
        if not self.dist.is_main:
            return None
        state = checkpoint_state(self.ctx, self.strategy.state_dict(), self.config)
        state["dataset"] = self.reader.fingerprint  # --resume refuses a cache that now holds other data
        return save_checkpoint(self.run_dir / name, {**state, "best_val": self.best_val, **extra})

    def validate(self) -> float | None:
        """Validation mean Dice (rank 0; None elsewhere or when off); a new best is written to ``best.pt``."""
        if not self.val_cases or not self.dist.is_main:
            return None
        cfg = self.config
        score = validation_dice(self.ctx.model, self.reader, self.val_cases, device=self.device,
                                amp_dtype=self.ctx.amp_dtype,
                                options=EvalOptions.from_config(cfg.eval, channels_last=cfg.train.channels_last))
        if score > self.best_val:
            self.best_val = score
            self.save(BEST_NAME, val_dice=score)
        return score

    def _load(self, path: Path) -> None:
        state = load_checkpoint(path)
        if state.get("dataset", self.reader.fingerprint) != self.reader.fingerprint:
            raise CheckpointError(dataset_changed_message(path, state["dataset"], self.reader))
        ctx = self.ctx
        part = "model"  # the part being loaded, named in the error
        try:
            ctx.model.load_state_dict(state["model"])
            part = "optimizer"
            ctx.optimizer.load_state_dict(state["optimizer"])
            part = "scheduler"
            ctx.scheduler.load_state_dict(state["scheduler"])
            part = "scaler"
            if ctx.scaler is not None and state["scaler"]:
                ctx.scaler.load_state_dict(state["scaler"])
            part = "strategy"
            self.strategy.load_state_dict(state["strategy"])
            part = "losses"
            ctx.losses.load_state_dict(state["losses"])
            part = "masking"
            for role, policy in ctx.masking.items():
                policy.load_state_dict(state["masking"].get(role, {}))
            part = "data"
            ctx.streams.load_state_dict(state["data"])
            part = "rng"
            torch.set_rng_state(state["rng"]["torch"])
            ctx.mask_generator.set_state(state["rng"]["mask"])
            if "cuda" in state["rng"] and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        except (KeyError, RuntimeError, ValueError, TypeError) as exc:
            raise CheckpointError(mismatch_message(path, state, ctx.model.state_dict(), self.config, exc,
                                                   part)) from None
        ctx.step = int(state["step"])
        self.best_val = float(state.get("best_val", float("-inf")))
        best = self.run_dir / BEST_NAME
        if best.is_file():  # written after the last checkpoint: its score counts too
            self.best_val = max(self.best_val, float(load_checkpoint(best).get("val_dice", float("-inf"))))

    # ---- the loop --------------------------------------------------------------------------------------------
    def _write_run_files(self) -> None:
        if not self.dist.is_main:
            return
        ensure_folder(self.run_dir)
        write_text_atomic(self.run_dir / "config.yaml", config_to_yaml(self.config))
        write_text_atomic(self.run_dir / "run_info.json", json.dumps(run_info(self.config), indent=2) + "\n")

    def fit(self, stop_at: int | None = None, signals: StopSignals | None = None) -> list[dict[str, float]]:
        """Train up to ``train.steps`` (or stop early at step ``stop_at``, e.g. to time-box a job).

        SIGTERM, SIGUSR1 and SIGINT finish the step in flight, write ``last.pt`` and raise :class:`Preempted`;
        ``signals``: an already installed :class:`StopSignals` to watch (the CLI's, which also covers building
        and evaluation), else one is installed for the loop."""
        cfg, ctx = self.config, self.ctx
        self._write_run_files()
        main = self.dist.is_main
        log = CsvLog(self.run_dir / "train_log.csv", resume_step=ctx.step if self.resume else None) if main else None
        board = TensorBoardLog.open(self.run_dir / "tensorboard") if main and cfg.train.tensorboard else None
        val_log = CsvLog(self.run_dir / "val_log.csv", resume_step=ctx.step if self.resume else None) \
            if main and self.val_cases else None
        history: list[dict[str, float]] = []
        total = cfg.train.steps
        ctx.model.train()
        progress = None
        if self.console.is_terminal and main:
            progress = Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("{task.fields[info]}"), TimeRemainingColumn(), console=self.console,
                                transient=False)
            task = progress.add_task("train", total=total, completed=ctx.step, info="")
            progress.start()
        t0, samples = time.perf_counter(), 0
        start_step, start_time = ctx.step, time.perf_counter()
        stop = signals if signals is not None else StopSignals().__enter__()
        try:
            end = total if stop_at is None else min(stop_at, total)
            signum = self._stop_requested(stop)
            if signum is not None:  # arrived while the run was being built: stop before any step
                self.save()
                raise Preempted(signum, ctx.step, total, self.run_dir / CHECKPOINT_NAME)
            while ctx.step < end:
                parts = run_strategy_step(self.strategy, self.strategy_entry, ctx)
                if self.strategy.uses_optimizer:
                    ctx.scheduler.step()
                ctx.step += 1
                samples += cfg.data.batch_size
                if ctx.step % cfg.train.epoch_length == 0:
                    ctx.losses.on_epoch_end()
                if ctx.step % cfg.train.log_every == 0 or ctx.step == total:
                    parts = ctx.mean_over_ranks(parts)
                    row = {"step": ctx.step, "lr": ctx.learning_rate(),
                           **{k: float(v) for k, v in parts.items()}}
                    elapsed = time.perf_counter() - t0
                    row["samples_per_s"] = samples / elapsed if elapsed > 0 else 0.0
                    if self.device.type == "cuda":
                        row["peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
                    history.append(row)
                    info = f"loss {row['loss']:.4f}  {rate_text(row['samples_per_s'])}"
                    if progress is not None:
                        progress.update(task, completed=ctx.step, info=info)
                    elif main:
                        left = (time.perf_counter() - start_time) / (ctx.step - start_step) * (end - ctx.step)
                        self.console.print(f"step {ctx.step}/{total}  {info}  ETA {eta_text(left)}", highlight=False)
                    if log is not None:
                        log.write(row)
                    if board is not None:
                        board.write(row)
                    t0, samples = time.perf_counter(), 0
                elif progress is not None:
                    progress.update(task, completed=ctx.step)
                if self.val_cases and (ctx.step % cfg.train.val_every == 0 or ctx.step == end):
                    score = self.validate()
                    if score is not None:
                        if val_log is not None:
                            val_log.write({"step": ctx.step, "val_dice": score, "best_val_dice": self.best_val})
                        if progress is not None:
                            progress.console.print(f"step {ctx.step}: validation Dice {score:.4f} "
                                                   f"(best {self.best_val:.4f})", highlight=False)
                        else:
                            self.console.print(f"step {ctx.step}/{total}  validation Dice {score:.4f}  "
                                               f"best {self.best_val:.4f}", highlight=False)
                saved = ctx.step % cfg.train.checkpoint_every == 0 or ctx.step == end
                if saved:
                    self.save()
                signum = self._stop_requested(stop)
                if signum is not None:
                    if not saved:
                        self.save()
                    raise Preempted(signum, ctx.step, total, self.run_dir / CHECKPOINT_NAME)
        finally:
            if signals is None:
                stop.__exit__(None, None, None)
            if board is not None:
                board.close()
            if progress is not None:
                progress.stop()
            ctx.streams.close()
        return history

    def _stop_requested(self, stop: StopSignals) -> int | None:
        """The stop signal received by any rank (all ranks stop at the same step), else None."""
        flag = stop.received or 0
        if self.dist.enabled:
            import torch.distributed as dist

            t = torch.tensor([flag], device=self.device)
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            flag = int(t.item())
        return flag or None

    def close(self, *, synchronise: bool = True) -> None:
        """Leave the process group (under torchrun), release the cache handle and the run folder's lock; safe to
        call more than once. ``synchronise=False`` (after an error) skips the barrier the other ranks may never
        reach."""
        import torch.distributed as dist

        if self.ctx.ddp:  # the DDP reducer must go before its process group (or gloo aborts at exit)
            self.ctx.forward_module, self.ctx.ddp = self.ctx.model, False
            gc.collect()
        if self.dist.enabled and dist.is_initialized():
            if synchronise:
                dist.barrier()
            dist.destroy_process_group()
        self.reader.close()
        if self.lock is not None:
            self.lock.release()

    def eval_cases(self) -> list[str]:
        """The cases :meth:`evaluate` scores (``eval.split``, at most ``eval.max_cases``)."""
        cases = list(self.reader.split(self.config.eval.split))
        return cases[: self.config.eval.max_cases] if self.config.eval.max_cases else cases

    def evaluate(self, on_case: Callable[[str], None] | None = None) -> EvalReport | None:
        """Evaluate on every combination (rank 0 only; other ranks return None); ``on_case(case_id)`` after each
        case (progress)."""
        if not self.dist.is_main:
            return None
        cfg = self.config
        cases = self.eval_cases()
        report = evaluate(self.ctx.model, self.reader, cases, device=self.device, amp_dtype=self.ctx.amp_dtype,
                          options=EvalOptions.from_config(cfg.eval, channels_last=cfg.train.channels_last),
                          adaptation=AdaptationSettings.from_config(cfg.eval),
                          adapt_rule=evaluation_rule(self.strategy), on_case=on_case)
        checkpoint = self.run_dir / CHECKPOINT_NAME  # the model evaluated is the one fit() saved last
        report.checkpoint = checkpoint_record(checkpoint) if checkpoint.is_file() else None
        write_report(report, self.run_dir)
        return report
