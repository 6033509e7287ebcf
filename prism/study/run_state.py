"""Where one study run stands, read from its folder: finished, to evaluate, to resume, to start (and failed).

A run is **finished** only when its evaluation scored its final checkpoint: ``eval.json`` records the checkpoint
it scored (``"checkpoint": {"file": "last.pt", "step": N, "sha256": HEX}``), ``N`` is the run's ``train.steps``
and ``HEX`` is the SHA-256 of the ``last.pt`` in the folder now. Any other ``eval.json`` (no record, an earlier
step, another file: e.g. ``prism-eval`` run while the run was still training) is stale and the evaluation is
redone.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..atomic import write_text_atomic

CHECKPOINT_NAME = "last.pt"
EVAL_NAME = "eval.json"
ERROR_NAME = "error.txt"


def evaluated_checkpoint(run_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The ``checkpoint`` record of ``RUN/eval.json`` (None: no eval.json, unreadable, or no record)."""
    try:
        data = json.loads((Path(run_dir) / EVAL_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    record = data.get("checkpoint") if isinstance(data, dict) else None
    return record if isinstance(record, dict) else None


def checkpoint_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 (hex) of a checkpoint file."""
    from ..data.verify import file_digest

    return file_digest(path)[1]


def evaluation_is_current(run_dir: str | os.PathLike[str], final_step: int) -> bool:
    """Whether ``RUN/eval.json`` scored the run's final checkpoint: its record names ``last.pt`` at
    ``final_step`` with the SHA-256 of the ``last.pt`` in the folder now.

    Args:
        run_dir: the run folder.
        final_step: the run's ``train.steps``.

    Returns:
        False when eval.json or last.pt is missing, the record is absent, or step, file or hash differ.
    """
    record = evaluated_checkpoint(run_dir)
    checkpoint = Path(run_dir) / CHECKPOINT_NAME
    if record is None or not checkpoint.is_file():
        return False
    if record.get("file", CHECKPOINT_NAME) != CHECKPOINT_NAME or record.get("step") != int(final_step):
        return False
    try:
        return record.get("sha256") == checkpoint_sha256(checkpoint)
    except OSError:
        return False


def record_evaluated_checkpoint(run_dir: str | os.PathLike[str], step: int) -> None:
    """Add the ``checkpoint`` record to ``RUN/eval.json`` when the evaluation did not write one (call it right
    after evaluating the model saved in ``last.pt`` at ``step``, while the run's lock is held). An evaluation
    that records its checkpoint itself is left as it is."""
    path = Path(run_dir) / EVAL_NAME
    checkpoint = Path(run_dir) / CHECKPOINT_NAME
    if evaluated_checkpoint(run_dir) is not None or not path.is_file() or not checkpoint.is_file():
        return
    data = json.loads(path.read_text(encoding="utf-8"))
    data["checkpoint"] = {"file": CHECKPOINT_NAME, "step": int(step), "sha256": checkpoint_sha256(checkpoint)}
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")


def checkpoint_step(run_dir: str | os.PathLike[str]) -> int | None:
    """The step of ``RUN/last.pt`` (memory-mapped, tensors not read; None: missing or unreadable)."""
    path = Path(run_dir) / CHECKPOINT_NAME
    if not path.is_file():
        return None
    try:
        import torch

        return int(torch.load(path, map_location="cpu", weights_only=True, mmap=True)["step"])
    except Exception:  # a damaged checkpoint is reported by the resume itself; here it has no step
        return None


@dataclass(frozen=True)
class RunFolderState:
    """What a run folder holds.

    Attributes:
        state: ``finished``, ``to adapt`` (evaluated, its adaptation curve missing), ``to evaluate`` (trained to
            the final step, evaluation missing or stale), ``to resume`` or ``to start``.
        step: the step of ``last.pt`` (None: none, or not read).
        failed: the last attempt left ``error.txt`` (a traceback); a rerun tries again.
    """

    state: str
    step: int | None
    failed: bool


def read_run_folder(run_dir: str | os.PathLike[str], final_step: int, wants_adapt: bool = False,
                    read_step: bool = True) -> RunFolderState:
    """Classify a run folder (see :class:`RunFolderState`); ``read_step=False`` skips reading ``last.pt``'s step
    (``to evaluate`` is then reported as ``to resume``)."""
    folder = Path(run_dir)
    failed = (folder / ERROR_NAME).is_file()
    if evaluation_is_current(folder, final_step):
        done = not wants_adapt or (folder / "adapt.json").is_file()
        return RunFolderState("finished" if done else "to adapt", final_step, False if done else failed)
    step = checkpoint_step(folder) if read_step else None
    if step is not None and step >= final_step:
        return RunFolderState("to evaluate", step, failed)
    if (folder / CHECKPOINT_NAME).is_file() or (folder / "config.yaml").is_file():
        return RunFolderState("to resume", step, failed)
    return RunFolderState("to start", None, failed)


__all__ = ["CHECKPOINT_NAME", "RunFolderState", "checkpoint_sha256", "checkpoint_step", "evaluated_checkpoint",
           "evaluation_is_current", "read_run_folder", "record_evaluated_checkpoint"]
