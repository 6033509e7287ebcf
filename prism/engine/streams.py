"""Named, resumable streams of batches (train, meta, support, ...), each an infinite DataLoader.

A stream's position (batches consumed) is its whole state: sample ``i`` of a stream is a function of the stream's
seed and ``i`` (:class:`prism.data.patches.PatchDataset`, read through :class:`prism.engine.rng.SeededSamples`), and
each DataLoader draws its worker seeds from a generator of its own seeded by the stream and its position, never
from torch's global generator (which the run's model draws from: dropout). Re-creating a stream after a resume
therefore changes nothing the run draws.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import DataLoader

from ..batch import Batch
from ..data.augment import Augmentation
from ..data.cache_reader import CacheReader
from ..data.patches import PatchDataset, RankSampler, collate_batch
from ..data.transforms import AugmentPipeline
from .rng import SeededSamples


class BatchStreams:
    """Each stream draws patches with its own seed; its position (batches consumed) is its whole state."""

    def __init__(self, reader: CacheReader, case_ids: Sequence[str], *, patch_size: Sequence[int], batch_size: int,
                 seed: int, foreground_fraction: float, flip: bool, num_workers: int, pin_memory: bool,
                 rank: int = 0, world: int = 1, augment: Augmentation | AugmentPipeline | None = None) -> None:
        self.reader = reader
        self.rank, self.world = rank, world
        self.augment = augment
        self.case_ids = tuple(case_ids)
        self.patch_size = tuple(patch_size)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.foreground_fraction = foreground_fraction
        self.flip = flip
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.positions: dict[str, int] = {}
        self.subsets: dict[str, tuple[str, ...]] = {}
        self._iters: dict[str, Iterator[Batch]] = {}

    def define(self, name: str, case_ids: Sequence[str]) -> None:
        """Let stream ``name`` draw only from ``case_ids`` (e.g. disjoint support and query cases)."""
        if not case_ids:
            raise ValueError(f"stream '{name}' needs at least one case")
        self.subsets[name] = tuple(case_ids)
        self._iters.pop(name, None)

    def _stream_seed(self, name: str) -> int:
        return self.seed if name == "train" else (self.seed * 7919 + zlib.crc32(name.encode())) % 2**31

    def _open(self, name: str) -> Iterator[Batch]:
        seed, position = self._stream_seed(name), self.positions.get(name, 0)
        dataset = PatchDataset(self.reader, self.subsets.get(name, self.case_ids), self.patch_size,
                               seed=seed, foreground_fraction=self.foreground_fraction,
                               flip=self.flip, augment=self.augment)
        sampler = RankSampler(position, self.batch_size, self.rank, self.world)
        loader = DataLoader(
            SeededSamples(dataset, seed), batch_size=sampler.local, sampler=sampler, collate_fn=collate_batch,
            num_workers=self.num_workers, pin_memory=self.pin_memory,
            persistent_workers=False, prefetch_factor=2 if self.num_workers else None,
            generator=torch.Generator().manual_seed(seed * 1_000_003 + position),  # never the global one
        )
        return iter(loader)

    def next(self, name: str = "train") -> Batch:
        if name not in self._iters:
            self._iters[name] = self._open(name)
        batch = next(self._iters[name])
        self.positions[name] = self.positions.get(name, 0) + 1
        return batch

    def state_dict(self) -> dict[str, int]:
        return dict(self.positions)

    def load_state_dict(self, positions: dict[str, int]) -> None:
        self.positions = {str(k): int(v) for k, v in positions.items()}
        self._iters.clear()

    def close(self) -> None:
        self._iters.clear()

