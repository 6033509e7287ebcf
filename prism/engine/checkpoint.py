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
    return write_atomic(path, lambda tmp: torch.save(payload, tmp))


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
