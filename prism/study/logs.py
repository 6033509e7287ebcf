"""What a run's ``train_log.csv`` says: its columns as numbers, and the loss terms' shares of the total."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

#: train_log.csv columns holding a loss part's share of the total loss (fractions): ``share.<part>``
SHARE_PREFIX = "share."


def read_train_log(path: Path) -> dict[str, np.ndarray]:
    """``train_log.csv`` as columns of floats (empty cells and text as NaN); {} when absent."""
    if not path.is_file():
        return {}
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        return {}

    def num(text: str | None) -> float:
        try:
            return float(text) if text not in (None, "") else math.nan
        except ValueError:
            return math.nan

    return {key: np.array([num(r.get(key)) for r in rows]) for key in rows[0]}


def term_shares(logs: list[dict[str, np.ndarray]]) -> dict[str, float | None]:
    """Each loss part's share of the total (``share.<part>`` columns of train_log.csv, fractions): the mean over a
    run's rows, then over the runs; {} when the logs have no such column."""
    parts = sorted({k[len(SHARE_PREFIX):] for log in logs for k in log if k.startswith(SHARE_PREFIX)})
    out: dict[str, float | None] = {}
    for part in parts:
        per_run = [float(np.nanmean(log[SHARE_PREFIX + part])) for log in logs
                   if SHARE_PREFIX + part in log and np.isfinite(log[SHARE_PREFIX + part]).any()]
        out[part] = round(float(np.mean(per_run)), 6) if per_run else None
    return out
