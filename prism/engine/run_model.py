"""Load a trained run for inference: the backbone from ``RUN/config.yaml``, its weights from ``RUN/last.pt``, and
what the run's cache says about the data (modalities, labels, preprocessing record).

Nothing of training is built (no data loaders or optimizer; the strategy only for its ``prepare_model`` and
``adapt``), so a run can be evaluated or used to
predict with only its config, its checkpoint and a cache holding the modalities it was trained on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..backbone import Backbone
from ..config import Config
from ..errors import CacheError, CheckpointError, ConfigError, PluginError
from ..strategy import Strategy


@dataclass
class RunModel:
    """A trained run ready for inference: the model (eval mode, on ``device``) and what its data were made of."""

    model: Backbone
    config: Config
    strategy: Strategy  # the run's strategy, its state loaded: its ``adapt`` is how the model adapts to a task
    cache: Path  # the cache the modalities and labels were read from
    modalities: tuple[str, ...]
    labels: dict[int, str]
    device: torch.device
    amp_dtype: torch.dtype | None
    label_map: dict[int, int] = field(default_factory=dict)  # the cache's raw -> stored label values
    preprocessing: dict[str, Any] = field(default_factory=dict)  # the cache's recorded preprocessing settings
    window: tuple[int, int, int] | None = None
    overlap: float = 0.5
    sw_batch_size: int = 1

    @property
    def num_classes(self) -> int:
        return max(self.labels) + 1


def run_cache_path(config: Config, cache: str | Path | None = None,
                   default_cache: Callable[[Config], Path] | None = None) -> Path:
    """``cache`` when given, else the run's ``data.cache``, else ``default_cache(config)`` (the synthetic demo
    cache for runs trained without a cache); a one-line CacheError when the file is not there."""
    if cache is not None:
        path = Path(cache)
    elif config.data.cache is not None:
        path = Path(config.data.cache)
    elif default_cache is not None:
        path = Path(default_cache(config))
    else:
        raise CacheError("the run has no data.cache in config.yaml: pass --data CACHE")
    if not path.is_file():
        raise CacheError(f"{path}: the run's cache (data.cache in config.yaml) is not found; its modalities and "
                         "label map are needed: pass --data CACHE")
    return path


def load_run_model(run_dir: str | Path, *, cache: str | Path | None = None, device: str | None = None,
                   overrides: Sequence[str] = (), default_cache: Callable[[Config], Path] | None = None
                   ) -> RunModel:
    """Rebuild a run's backbone through the registry from ``RUN/config.yaml`` (with ``overrides`` applied), load
    ``RUN/last.pt`` and read the modalities, labels and preprocessing record of the cache (see
    :func:`run_cache_path`). ``device`` replaces ``train.device``."""
    from ..data.cache_reader import CacheReader
    from ..registry import blame, get_registry
    from .builder import amp_dtype_for, select_device
    from .checkpoint import load_checkpoint, mismatch_message
    from .trainer import CHECKPOINT_NAME, load_run_config

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ConfigError(f"{run_dir}: run folder not found")
    config = load_run_config(run_dir, [*overrides, *([f"train.device={device}"] if device else [])])
    checkpoint = run_dir / CHECKPOINT_NAME
    if not checkpoint.is_file():
        raise CheckpointError(f"{checkpoint}: checkpoint not found (has the run trained?)")
    path = run_cache_path(config, cache, default_cache)
    reader = CacheReader(path)
    try:
        modalities, labels = reader.modalities, dict(reader.labels)
        label_map, preprocessing = dict(reader.label_map or {}), dict(reader.preprocessing)
    finally:
        reader.close()
    model = get_registry().create("backbone", config.model.name, modalities, max(labels) + 1,
                                  field_name="model.name", **config.model.options)
    if not isinstance(model, Backbone):
        raise PluginError(f"model.name: backbone '{config.model.name}' did not build a prism Backbone")
    strategy = get_registry().create("strategy", config.strategy.name, field_name="strategy.name",
                                     **config.strategy.options)
    with blame(get_registry().get("strategy", config.strategy.name), "preparing the model"):
        model = strategy.prepare_model(model)
    state = load_checkpoint(checkpoint)
    try:
        model.load_state_dict(state["model"])
        strategy.load_state_dict(state.get("strategy", {}))
    except (KeyError, RuntimeError) as exc:  # first mismatched keys and the config fields changed (overrides)
        raise CheckpointError(mismatch_message(checkpoint, state, model.state_dict(), config, exc)) from None
    dev = select_device(config.train.device)
    model = model.to(dev).eval()
    return RunModel(model=model, config=config, strategy=strategy, cache=path, modalities=modalities, labels=labels,
                    device=dev,
                    amp_dtype=amp_dtype_for(config, dev), label_map=label_map, preprocessing=preprocessing,
                    window=config.eval.window, overlap=config.eval.overlap, sw_batch_size=config.eval.sw_batch_size)
