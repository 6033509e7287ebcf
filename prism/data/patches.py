"""Random training patches from a cache, addressed by sample number so that runs resume exactly."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from ..batch import Batch
from .augment import Augmentation, intensity_jitter, random_rotation, rotate_region, rotation_margin
from .cache_reader import CacheReader
from .transforms import AugmentPipeline


class PatchDataset(Dataset):
    """Sample ``i`` is a patch drawn with a generator seeded by ``(seed, i)``: independent of workers and order.

    A fraction ``foreground_fraction`` of patches is centred on a stored foreground voxel (nnU-Net oversamples a
    third); the rest are uniform. Volumes smaller than the patch are zero-padded (label 0). Augmentation is one of
    two kinds, both drawn from the same per-sample generator, so the sample is the same whichever DataLoader
    worker draws it; the file handle opens lazily in each worker:

    - ``light`` (``data.augment: light``): flips (each axis with probability 1/2, ``flip``, on by default) and the
      optional ``augment`` :class:`~prism.data.augment.Augmentation` (rotations, intensity);
    - a transform list (``augment`` an :class:`~prism.data.transforms.AugmentPipeline`, ``flip`` False): the
      pipeline reads the patch (a larger region when it rotates or scales) and transforms it, its generators
      seeded from the sample's.

    ``snap`` > 0 rounds every patch start down to a multiple of ``snap`` (use the cache's chunk edge, 16 by
    default): a patch whose size is a multiple of the chunk then touches no chunk it does not fill, which cuts the
    voxels a read decompresses (default chunks, 80^3 patches: 1.75x the patch instead of 2.5x; the rows of the
    last axis are whole either way), at the price of coarser patch positions (flips and rotations still vary the
    content). Off by default.
    """

    def __init__(self, reader: CacheReader, case_ids: Sequence[str], patch_size: Sequence[int], *,
                 foreground_fraction: float = 1 / 3, seed: int = 0, flip: bool | None = None,
                 augment: Augmentation | AugmentPipeline | None = None, snap: int = 0) -> None:
        if not case_ids:
            raise ValueError("PatchDataset needs at least one case")
        if isinstance(augment, AugmentPipeline) and flip:
            raise ValueError("flip belongs to the light augmentation; a transform list flips with 'mirror'")
        flip = not isinstance(augment, AugmentPipeline) if flip is None else flip
        self.reader = reader
        self.case_ids = tuple(case_ids)
        self.patch_size = tuple(int(p) for p in patch_size)
        self.foreground_fraction = float(foreground_fraction)
        self.seed = int(seed)
        self.flip = flip
        self.augment = augment
        if snap < 0:
            raise ValueError("snap must be >= 0")
        self.snap = int(snap)

    def __len__(self) -> int:  # addressed by sample number; the sampler decides how many
        return 2**62

    def _start(self, rng: np.random.Generator, case_id: str, shape: tuple[int, ...]) -> list[int]:
        ps = self.patch_size
        centre = None
        if rng.random() < self.foreground_fraction:
            fg = self.reader.foreground(case_id)
            if len(fg):
                centre = fg[rng.integers(len(fg))]
        if centre is None:
            start = [int(rng.integers(0, max(s - p, 0) + 1)) for s, p in zip(shape, ps, strict=False)]
        else:
            start = [int(np.clip(c - p // 2, 0, max(s - p, 0))) for c, s, p in zip(centre, shape, ps, strict=False)]
        if self.snap:
            start = [s - s % self.snap for s in start]
        return start

    def __getitem__(self, index: int) -> dict[str, Any]:
        rng = np.random.default_rng((self.seed, int(index)))
        case_id = self.case_ids[int(rng.integers(len(self.case_ids)))]
        info = self.reader.info(case_id)
        start = self._start(rng, case_id, info.shape)
        if isinstance(self.augment, AugmentPipeline):
            image_t, label_t = self.augment.make_patch(
                lambda at, size: self.reader.read_region(case_id, at, size), start, self.patch_size, info.shape,
                info.availability, seed=int(rng.integers(2**63)))
            return {"image": image_t, "label": label_t,
                    "availability": torch.tensor(info.availability, dtype=torch.bool), "case_id": case_id}
        axes = tuple(ax for ax in range(3) if rng.random() < 0.5) if self.flip else ()
        aug = self.augment
        rotation = None
        if aug is not None and aug.rotate_degrees > 0 and rng.random() < aug.rotate_probability:
            rotation = random_rotation(rng, aug.rotate_degrees)
        if rotation is None:
            image, label = self.reader.read_region(case_id, tuple(start), self.patch_size)
        else:
            margin = rotation_margin(rotation, self.patch_size)
            region_start = tuple(s - m for s, m in zip(start, margin, strict=True))
            region_size = tuple(p + 2 * m for p, m in zip(self.patch_size, margin, strict=True))
            image, label = self.reader.read_region(case_id, region_start, region_size)
            image, label = rotate_region(image, label, rotation, self.patch_size)
        if axes:
            image = np.flip(image, axis=tuple(a + 1 for a in axes))
            label = np.flip(label, axis=axes)
        if aug is not None and (aug.intensity_scale > 0 or aug.intensity_shift > 0):
            image = intensity_jitter(image, rng, aug.intensity_scale, aug.intensity_shift)
        return {
            "image": torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)),
            "label": torch.from_numpy(np.ascontiguousarray(label).astype(np.int64)),
            "availability": torch.tensor(info.availability, dtype=torch.bool),
            "case_id": case_id,
        }


def collate_batch(samples: list[dict[str, Any]]) -> Batch:
    """Stack samples into a Batch; the mask starts as the availability (the masking policy narrows it)."""
    availability = torch.stack([s["availability"] for s in samples])
    image = torch.stack([s["image"] for s in samples])
    image = image * availability[:, :, None, None, None].to(image.dtype)  # what does not exist is zero
    return Batch(
        image=image,
        label=torch.stack([s["label"] for s in samples]),
        mask=availability.clone(),
        availability=availability,
        case_ids=[s["case_id"] for s in samples],
    )


class RankSampler(Sampler[int]):
    """Sample numbers of this rank's share of each global batch, from global batch ``start`` on, forever.

    Global batch ``b`` is samples ``b * G .. b * G + G - 1``; rank ``r`` of ``W`` takes the ``r``-th slice of
    ``G / W``. With one rank this is simply ``start * G, start * G + 1, ...``.
    """

    def __init__(self, start: int, global_batch: int, rank: int = 0, world: int = 1) -> None:
        self.start, self.global_batch, self.rank, self.world = start, global_batch, rank, world
        self.local = global_batch // world

    def __iter__(self) -> Iterator[int]:
        b = self.start
        while True:
            first = b * self.global_batch + self.rank * self.local
            yield from range(first, first + self.local)
            b += 1

    def __len__(self) -> int:  # pragma: no cover - infinite
        return 2**62
