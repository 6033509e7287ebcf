"""Which checkpoint a report scored: its file name, training step and the SHA-256 of its bytes.

Every evaluation report (``eval.json``, ``adapt.json``, ``fewshot.json``) holds, as the top-level key
``"checkpoint"``, ``{"file": "last.pt", "step": <int>, "sha256": "<hex>"}``. A report whose record does not match
the run's current ``last.pt`` scored another checkpoint (an evaluation made during training, before a resume)
and is stale: :func:`report_matches_checkpoint` says so.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from ..errors import CheckpointError

#: the checkpoint a run's reports score
CHECKPOINT_FILE = "last.pt"
_BLOCK = 1 << 20
T = TypeVar("T")


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file's bytes (read in blocks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def checkpoint_record(path: str | os.PathLike[str]) -> dict[str, Any]:
    """``{"file", "step", "sha256"}`` of a prism checkpoint; the step and the hash come from one read of the file.

    Raises:
        CheckpointError: the file is missing or not a checkpoint with a step (one line naming it).
    """
    import torch

    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read the checkpoint: {exc.strerror or exc}") from None
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        step = int(state["step"])
    except Exception as exc:  # any unreadable payload: one line, the loader reports the details
        raise CheckpointError(f"{path}: not a prism checkpoint with a step ({type(exc).__name__})") from None
    return {"file": path.name, "step": step, "sha256": hashlib.sha256(data).hexdigest()}


def try_checkpoint_record(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """:func:`checkpoint_record`, or None when the file is missing or unreadable (for callers whose checkpoint
    loader reports those cases in its own words)."""
    try:
        return checkpoint_record(path)
    except CheckpointError:
        return None


def load_with_record(path: str | os.PathLike[str], load: Callable[[], T]) -> tuple[T, dict[str, Any]]:
    """``load()`` (which reads the checkpoint at ``path``) and the record of the checkpoint it read.

    The record is taken before loading and checked after it, so it names the bytes that were loaded: a
    checkpoint replaced in between (training still running) is a one-line error rather than a mislabelled report.

    Raises:
        CheckpointError: the file changed while it was being loaded; whatever ``load`` raises.
    """
    record = try_checkpoint_record(path)
    value = load()
    record = record or checkpoint_record(path)
    same_checkpoint(record, path)
    return value, record


def same_checkpoint(before: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """CheckpointError when ``path`` no longer holds the checkpoint ``before`` recorded (replaced while in use).

    Raises:
        CheckpointError: the file changed (e.g. training wrote a new ``last.pt`` during the evaluation).
    """
    try:
        now = file_sha256(path)
    except OSError:
        now = ""
    if now != before["sha256"]:
        raise CheckpointError(f"{path}: the checkpoint changed while it was being evaluated (step "
                              f"{before['step']} was loaded); nothing was written: evaluate again when training "
                              "has stopped")


def report_matches_checkpoint(run_dir: str | os.PathLike[str], report: str = "eval.json") -> bool:
    """Whether ``run_dir/report`` scored the run's current ``last.pt`` (same file name and SHA-256).

    False when the report or the checkpoint is missing or unreadable, or the report records no checkpoint
    (written before reports recorded one): such a report is stale and should be made again.

    Args:
        run_dir: a run folder.
        report: the report's file name in it (``eval.json``, ``adapt.json``, ``fewshot.json``).
    """
    run_dir = Path(run_dir)
    try:
        record = json.loads((run_dir / report).read_text(encoding="utf-8")).get("checkpoint")
    except (OSError, ValueError, AttributeError):
        return False
    if not isinstance(record, dict) or not isinstance(record.get("sha256"), str):
        return False
    name = str(record.get("file") or CHECKPOINT_FILE)
    try:
        return file_sha256(run_dir / name) == record["sha256"] and name == CHECKPOINT_FILE
    except OSError:
        return False
