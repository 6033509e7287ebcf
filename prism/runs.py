"""A run folder, read back: its config, its checkpoints, and the trained run ready to predict and adapt.

``prism-train -o RUN`` writes ``RUN/config.yaml`` (the resolved config), ``RUN/last.pt`` (the latest checkpoint)
and, with validation, ``RUN/best.pt``. :func:`load_run` rebuilds what a trained run is for inference: the
backbone with its weights, the run's strategy with its state (its ``adapt`` is how the model adapts to a new
task), the config, and what the run's cache says about the data. It is what ``prism-eval``, ``prism-predict`` and
the adaptation curves use::

    from prism.runs import load_run

    run = load_run("runs/maml-site")              # a run on the built-in demo data needs nothing more
    weights = run.strategy.adapt(run.model, support_batches, loss_fn)

Nothing of training is built (no data loader, no optimizer). Checkpoints are read with ``weights_only=True``:
no Python object is ever unpickled.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .backbone import Backbone
from .config import Config, build_config, config_to_yaml, load_yaml
from .data.cache_reader import CacheReader
from .errors import CacheError, CheckpointError, ConfigError, PluginError
from .registry import blame, get_registry
from .strategy import Strategy

CONFIG_NAME = "config.yaml"
CHECKPOINT_NAME = "last.pt"
BEST_NAME = "best.pt"  # the weights with the best validation mean Dice (train.val_every)

CHECKPOINT_FORMAT = "prism-checkpoint"
CHECKPOINT_VERSION = 1


# ---- checkpoints ------------------------------------------------------------------------------------------------

def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a checkpoint safely (no unpickling of arbitrary objects); errors are one line naming the file.

    Raises:
        CheckpointError: missing, unreadable, pickled Python objects, not a prism checkpoint or another version.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(f"{path}: holds pickled Python objects, not only tensors; prism loads checkpoints "
                              "with weights_only=True and never unpickles code (is it a prism last.pt?)") from None
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: unreadable checkpoint: {first}") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not a prism checkpoint")
    if state.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(f"{path}: checkpoint version {state.get('version')} is not {CHECKPOINT_VERSION}")
    return state


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: data}


def config_changes(saved_yaml: str, current: Config) -> list[str]:
    """Dotted config fields that differ between a checkpoint's config (YAML text) and ``current`` (a Config),
    as ``field (old -> new)``; ``train.steps`` and the other fields a resume may change are included too."""
    import yaml

    try:
        old = _flatten(yaml.safe_load(saved_yaml) or {})
    except yaml.YAMLError:
        return []
    new = _flatten(yaml.safe_load(config_to_yaml(current)) or {})
    return [f"{k} ({old.get(k)!r} -> {new.get(k)!r})" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]


def weights_mismatch(saved: dict[str, Any], current: dict[str, Any], limit: int = 3) -> str:
    """What differs between two model state dicts: the first missing, unexpected and reshaped keys."""
    missing = [k for k in current if k not in saved]
    unexpected = [k for k in saved if k not in current]
    reshaped = [f"{k} {tuple(saved[k].shape)} vs {tuple(current[k].shape)}" for k in current
                if k in saved and hasattr(saved[k], "shape") and tuple(saved[k].shape) != tuple(current[k].shape)]
    parts = []
    for what, keys in (("missing", missing), ("unexpected", unexpected), ("shape", reshaped)):
        if keys:
            more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
            parts.append(f"{what} {', '.join(keys[:limit])}{more}")
    return "; ".join(parts)


def mismatch_message(path: Path, state: dict[str, Any], model_state: dict[str, Any], config: Config,
                     exc: BaseException, part: str = "model") -> str:
    """One line saying why ``state`` (a loaded checkpoint) does not fit the run built from ``config``: the part
    that failed (``model``: its first mismatched weight keys) and the config fields changed since it was written."""
    saved = state.get("model")
    what = weights_mismatch(saved, model_state) if part == "model" and isinstance(saved, dict) else ""
    if not what:
        text = f"key {exc}" if isinstance(exc, KeyError) else str(exc).strip()
        what = f"{part} state: {text.splitlines()[0] if text else type(exc).__name__}"
    elif part == "model":
        what = f"model weights: {what}"
    changes = [c for c in config_changes(str(state.get("config", "")), config)
               if not c.startswith(("train.steps ", "data.cache ", "output_dir "))]
    changed = f"; config changed since the checkpoint: {', '.join(changes[:3])}" if changes else ""
    return f"{path}: does not match this run's config: {what}{changed}"


# ---- devices ----------------------------------------------------------------------------------------------------

def select_device(name: str) -> torch.device:
    """``train.device`` as a torch device (``auto``: CUDA when available).

    Raises:
        ConfigError: ``cuda`` asked for where there is none.
    """
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device: 'cuda' requested but no CUDA device is available")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def amp_dtype_for(config: Config, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``train.amp`` on ``device`` (None: full precision; autocast is CUDA-only)."""
    if device.type != "cuda" or config.train.amp == "none":
        return None
    return torch.bfloat16 if config.train.amp == "bf16" else torch.float16


# ---- the run folder ---------------------------------------------------------------------------------------------

def load_run_config(run_dir: str | os.PathLike[str], overrides: Sequence[str] = ()) -> Config:
    """The config a run was started with (``RUN/config.yaml``), with ``overrides`` (``field=value``) applied.

    Raises:
        ConfigError: not a run folder, or an override that does not fit the config.
    """
    path = Path(run_dir) / CONFIG_NAME
    if not path.is_file():
        raise ConfigError(f"{run_dir}: not a prism run folder (no {CONFIG_NAME})")
    return build_config(load_yaml(path), list(overrides), source=str(path))


def run_cache_path(config: Config, cache: str | os.PathLike[str] | None = None) -> Path:
    """The cache a run's data came from: ``cache`` when given, else the run's ``data.cache``, else the built-in
    demo data the run was trained on (``data.synthetic``; generated into the user's cache folder if absent).

    Raises:
        CacheError: the file is not there (one line saying to pass the cache).
    """
    if cache is not None:
        path = Path(cache)
    elif config.data.cache is not None:
        path = Path(config.data.cache)
    else:
        from .data_tools.demo import ensure_demo_cache

        path, _ = ensure_demo_cache(config.data.synthetic)
    if not path.is_file():
        raise CacheError(f"{path}: the run's cache (data.cache in {CONFIG_NAME}) is not found; its modalities and "
                         "label map are needed: pass --data CACHE (from Python: load_run(..., cache=CACHE))")
    return Path(path)


@dataclass
class TrainedRun:
    """A trained run ready for inference (:func:`load_run`).

    Attributes:
        model: the backbone with the run's weights, in eval mode, on ``device``.
        config: the run's config (overrides applied).
        strategy: the run's strategy with its state loaded: ``strategy.adapt(model, support, loss_fn)`` adapts
            the model to a task the way the run was meta-trained to.
        cache: the cache the modalities and labels were read from.
        modalities: the modality names, in the model's channel order.
        labels: stored label value -> region name (``max(labels) + 1`` classes).
        device: where the model is.
        amp_dtype: the autocast dtype of ``train.amp`` on that device (None: full precision).
        label_map: the cache's raw -> stored label values (to write predictions in the dataset's values).
        preprocessing: the cache's recorded preprocessing settings (crop, layout).

    How the run predicts (sliding windows, test-time mirroring) is its config's ``eval`` section:
    ``prism.evaluation.options.EvalOptions.from_config(run.config.eval)``.
    """

    model: Backbone
    config: Config
    strategy: Strategy
    cache: Path
    modalities: tuple[str, ...]
    labels: dict[int, str]
    device: torch.device
    amp_dtype: torch.dtype | None
    label_map: dict[int, int] = field(default_factory=dict)
    preprocessing: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return max(self.labels) + 1


def load_run(run_dir: str | os.PathLike[str], *, cache: str | os.PathLike[str] | None = None,
             device: str | None = None, overrides: Sequence[str] = ()) -> TrainedRun:
    """Load a trained run from its folder: the backbone rebuilt through the registry from ``RUN/config.yaml``
    with the weights of ``RUN/last.pt``, the run's strategy with its state, and the modalities, labels and
    preprocessing record of the run's cache.

    Args:
        run_dir: the folder ``prism-train -o`` wrote.
        cache: the cache to read modalities and labels from, when the run's ``data.cache`` moved; a run trained
            on the built-in demo data finds it without this.
        device: replaces ``train.device`` (``cpu``, ``cuda``, ``auto``).
        overrides: ``field=value`` changes to the run's config (e.g. ``eval.split=val``).

    Returns:
        The :class:`TrainedRun`, model in eval mode.

    Raises:
        ConfigError: not a run folder, or a bad override.
        CheckpointError: no ``last.pt``, or one that does not fit the config (the first mismatched keys named).
        CacheError: the run's cache is not there.
        PluginError: the run's plugins are not installed (one line naming them).
        PluginBug: a plugin raised while being built or preparing the model.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ConfigError(f"{run_dir}: run folder not found")
    config = load_run_config(run_dir, [*overrides, *([f"train.device={device}"] if device else [])])
    checkpoint = run_dir / CHECKPOINT_NAME
    if not checkpoint.is_file():
        raise CheckpointError(f"{checkpoint}: checkpoint not found (has the run trained?)")
    path = run_cache_path(config, cache)
    reader = CacheReader(path)
    try:
        modalities, labels = reader.modalities, dict(reader.labels)
        label_map, preprocessing = dict(reader.label_map or {}), dict(reader.preprocessing)
    finally:
        reader.close()
    registry = get_registry()
    model = registry.build("backbone", config.model.name, (modalities, max(labels) + 1), config.model.options,
                           field="model.name")
    if not isinstance(model, Backbone):
        raise PluginError(f"model.name: backbone '{config.model.name}' did not build a prism Backbone")
    strategy = registry.build("strategy", config.strategy.name, (), config.strategy.options, field="strategy.name")
    with blame(registry.get("strategy", config.strategy.name), "preparing the model"):
        model = strategy.prepare_model(model)
    state = load_checkpoint(checkpoint)
    try:
        model.load_state_dict(state["model"])
        strategy.load_state_dict(state.get("strategy", {}))
    except (KeyError, RuntimeError) as exc:  # first mismatched keys and the config fields changed (overrides)
        raise CheckpointError(mismatch_message(checkpoint, state, model.state_dict(), config, exc)) from None
    dev = select_device(config.train.device)
    model = model.to(dev).eval()
    return TrainedRun(model=model, config=config, strategy=strategy, cache=path, modalities=modalities,
                      labels=labels, device=dev, amp_dtype=amp_dtype_for(config, dev), label_map=label_map,
                      preprocessing=preprocessing)
