"""Atomic checkpoints (written through :mod:`prism.atomic`); loaded with ``weights_only=True``."""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import torch

from ..atomic import ensure_folder, write_atomic
from ..errors import CheckpointError

CHECKPOINT_FORMAT = "prism-checkpoint"
CHECKPOINT_VERSION = 1


def save_checkpoint(path: str | os.PathLike[str], state: dict[str, Any]) -> Path:
    """Write ``state`` to ``path`` so that a kill at any moment leaves either the old file or the new one.

    Raises:
        StorageError: the disk is full, the folder read-only or not writable (the old file is kept).
    """
    path = Path(path)
    ensure_folder(path.parent)
    payload = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **state}

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:  # a Python file: a full disk is an OSError with its errno, not a C++ message
            torch.save(payload, fh)

    return write_atomic(path, write)


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


def config_changes(saved_yaml: str, current: Any) -> list[str]:
    """Dotted config fields that differ between a checkpoint's config (YAML text) and ``current`` (a Config),
    as ``field (old -> new)``; ``train.steps`` and the other fields a resume may change are included too."""
    import yaml

    from ..config import config_to_yaml

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


def mismatch_message(path: Path, state: dict[str, Any], model_state: dict[str, Any], config: Any,
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


def load_initial_weights(model: torch.nn.Module, source: str | os.PathLike[str]) -> None:
    """Load a trained run's backbone weights (``source``: its folder, whose ``last.pt`` is read, or a checkpoint
    file) into ``model`` before training starts (``model.init_from``).

    Raises:
        CheckpointError: no checkpoint there, or its weights do not fit this backbone (the first keys named).
    """
    path = Path(source)
    if path.is_dir():
        path = path / "last.pt"
    if not path.is_file():
        raise CheckpointError(f"model.init_from: {path}: no checkpoint there (a run folder with last.pt, or a .pt)")
    saved = load_checkpoint(path).get("model")
    if not isinstance(saved, dict):
        raise CheckpointError(f"model.init_from: {path}: holds no model weights")
    current = model.state_dict()
    if set(saved) != set(current) or any(saved[k].shape != current[k].shape for k in current):
        raise CheckpointError(f"model.init_from: {path}: weights do not fit backbone {type(model).__name__}: "
                              f"{weights_mismatch(saved, current)}")
    model.load_state_dict(saved)
