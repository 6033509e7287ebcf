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

from ..evaluation.provenance import report_matches_checkpoint

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


def evaluation_is_current(run_dir: str | os.PathLike[str], final_step: int) -> bool:
    """Whether ``RUN/eval.json`` scored the run's final checkpoint: it matches the ``last.pt`` in the folder now
    (:func:`prism.evaluation.provenance.report_matches_checkpoint`) and records ``final_step``.

    Args:
        run_dir: the run folder.
        final_step: the run's ``train.steps``.

    Returns:
        False when eval.json or last.pt is missing, the record is absent, or step, file or hash differ.
    """
    record = evaluated_checkpoint(run_dir)
    return (record is not None and record.get("step") == int(final_step)
            and report_matches_checkpoint(run_dir, EVAL_NAME))


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


__all__ = ["CHECKPOINT_NAME", "RunFolderState", "checkpoint_step", "evaluated_checkpoint", "evaluation_is_current",
           "read_run_folder"]
