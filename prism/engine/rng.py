"""Every random generator a run draws from, seeded by the run and saved in its checkpoints.

A run owns: torch's global CPU generator (weight initialisation, dropout on the CPU), every CUDA device's generator
(dropout on a GPU), NumPy's and Python's global generators (whatever a plugin draws there) and the run's mask
generator (``StepContext.generator``). The DataLoader behind each stream draws from a generator of its own, seeded
by the stream's seed and position (:mod:`prism.engine.streams`), and every sample re-seeds the global generators
of the process that reads it (:class:`SeededSamples`), so the samples do not depend on which worker reads them or
on when the loader was (re)created. Together these make a resumed run bitwise equal to an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset


def seed_globals(seed: int) -> None:
    """Seed torch (CPU and every CUDA device), NumPy's and Python's global generators with ``seed``."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def _numpy_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}


def _set_numpy_state(state: dict[str, Any]) -> None:
    keys = state["keys"].numpy().astype(np.uint32)
    np.random.set_state((state["kind"], keys, state["pos"], state["has_gauss"], state["cached_gaussian"]))


def capture_rng(mask_generator: torch.Generator) -> dict[str, Any]:
    """The state of every generator the run owns (tensors, ints and tuples: loadable with ``weights_only``)."""
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "mask": mask_generator.get_state(),
                             "numpy": _numpy_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any], mask_generator: torch.Generator) -> None:
    """Put back what :func:`capture_rng` saved (generators missing from an older checkpoint are left alone).

    Raises:
        KeyError, TypeError, ValueError, RuntimeError: the saved state is not one this function wrote.
    """
    torch.set_rng_state(state["torch"])
    mask_generator.set_state(state["mask"])
    if "numpy" in state:
        _set_numpy_state(state["numpy"])
    if "python" in state:
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@contextlib.contextmanager
def seeded_globals(seed: int) -> Iterator[None]:
    """Run the body with torch's CPU, NumPy's and Python's global generators seeded by ``seed``, then put their
    previous states back (so drawing a sample in the training process leaves the run's generators untouched)."""
    saved = torch.get_rng_state(), np.random.get_state(), random.getstate()
    torch.default_generator.manual_seed(seed)  # the CPU generator only: CUDA's stays the run's (dropout)
    np.random.seed(seed % 2**32)
    random.seed(seed)
    try:
        yield
    finally:
        torch.set_rng_state(saved[0])
        np.random.set_state(saved[1])
        random.setstate(saved[2])


class SeededSamples(Dataset):
    """A dataset whose sample ``i`` is read with the global generators seeded by ``(seed, i)``.

    prism's patch sampler draws from its own per-sample generator already; this wrapper extends the guarantee to
    anything that reads a global generator while a sample is made (a third-party transform, say), whichever
    DataLoader worker makes it.

    Args:
        dataset: the wrapped map-style dataset.
        seed: the stream's seed.
    """

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset = dataset
        self.seed = int(seed)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Any:
        sample_seed = int(np.random.SeedSequence((self.seed, int(index))).generate_state(1, np.uint64)[0])
        with seeded_globals(sample_seed % 2**63):
            return self.dataset[index]
