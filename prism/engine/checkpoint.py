"""Atomic checkpoints (written through :mod:`prism.atomic`); read back with :func:`prism.runs.load_checkpoint`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from ..atomic import ensure_folder, write_atomic
from ..errors import CheckpointError
from ..runs import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_NAME,
    CHECKPOINT_VERSION,
    load_checkpoint,
    mismatch_message,
    weights_mismatch,
)

#: what the engine reads and writes (the reading half lives in prism.runs, below evaluation)
__all__ = ["save_checkpoint", "load_checkpoint", "load_initial_weights", "mismatch_message", "weights_mismatch"]


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


def load_initial_weights(model: torch.nn.Module, source: str | os.PathLike[str]) -> None:
    """Load a trained run's backbone weights (``source``: its folder, whose ``last.pt`` is read, or a checkpoint
    file) into ``model`` before training starts (``model.init_from``).

    Raises:
        CheckpointError: no checkpoint there, or its weights do not fit this backbone (the first keys named).
    """
    path = Path(source)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
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
