"""Train/val/test splits, reproducible from a seed."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def make_splits(case_ids: Sequence[str], *, seed: int = 0, test_fraction: float = 0.2,
                val_fraction: float = 0.0) -> dict[str, list[str]]:
    """Shuffle ``case_ids`` with ``seed`` and cut them into train/val/test (each sorted; empty splits left out)."""
    if not 0 <= test_fraction < 1 or not 0 <= val_fraction < 1 or test_fraction + val_fraction >= 1:
        raise ValueError(f"bad split fractions: test {test_fraction}, val {val_fraction}")
    ids = sorted(case_ids)
    order = np.random.default_rng(seed).permutation(len(ids))
    n_test = int(round(len(ids) * test_fraction))
    n_val = int(round(len(ids) * val_fraction))
    test = sorted(ids[i] for i in order[:n_test])
    val = sorted(ids[i] for i in order[n_test:n_test + n_val])
    train = sorted(ids[i] for i in order[n_test + n_val:])
    return {name: members for name, members in (("train", train), ("val", val), ("test", test)) if members}
