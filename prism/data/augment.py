"""The pieces of the ``light`` augmentation (``data.augment: light``, the default): small random rotations (read
with a margin, so corners hold real data) and intensity scale/shift. Its flips live in :mod:`prism.data.patches`.
Every draw comes from the sample's own generator. Transform lists (``nnunet`` and others) are
:mod:`prism.data.transforms`."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Augmentation:
    """Spatial and intensity augmentation beyond flips (all off by default).

    ``rotate_degrees``: each axis rotated by an angle uniform in [-r, r], with probability ``rotate_probability``;
    ``intensity_scale`` s and ``intensity_shift`` t: each channel becomes ``x * U(1-s, 1+s) + U(-t, t)``.
    """

    rotate_degrees: float = 0.0
    rotate_probability: float = 0.2
    intensity_scale: float = 0.0
    intensity_shift: float = 0.0

    def __post_init__(self) -> None:
        if not 0 <= self.rotate_degrees <= 45:
            raise ValueError(f"rotate_degrees must be in [0, 45], got {self.rotate_degrees}")
        if not 0 <= self.rotate_probability <= 1:
            raise ValueError(f"rotate_probability must be in [0, 1], got {self.rotate_probability}")
        if not 0 <= self.intensity_scale < 1 or self.intensity_shift < 0:
            raise ValueError("intensity_scale must be in [0, 1) and intensity_shift >= 0")


def random_rotation(rng: np.random.Generator, max_degrees: float) -> np.ndarray:
    """A rotation matrix ``[3, 3]`` (axes d, h, w) composed of one random angle per axis."""
    ax, ay, az = np.deg2rad(rng.uniform(-max_degrees, max_degrees, size=3))
    rx = np.array([[1, 0, 0], [0, math.cos(ax), -math.sin(ax)], [0, math.sin(ax), math.cos(ax)]])
    ry = np.array([[math.cos(ay), 0, math.sin(ay)], [0, 1, 0], [-math.sin(ay), 0, math.cos(ay)]])
    rz = np.array([[math.cos(az), -math.sin(az), 0], [math.sin(az), math.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def rotation_margin(rotation: np.ndarray, size: tuple[int, ...]) -> tuple[int, ...]:
    """Voxels to read on each side of a patch of ``size`` so that its rotation only samples read data."""
    half = (np.asarray(size, float) - 1) / 2
    needed = np.abs(rotation) @ half  # largest |(R c)_i| over the patch corners c
    return tuple(int(math.ceil(n - h - 1e-9)) + 1 for n, h in zip(needed, half, strict=True))


def rotate_region(image: np.ndarray, label: np.ndarray, rotation: np.ndarray, size: tuple[int, ...]
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Resample the centre ``size`` of a region (image ``[M, ...]`` trilinear, label nearest) rotated about it."""
    region = np.asarray(label.shape, float)
    out = np.asarray(size, float)
    theta_dhw = np.diag(2 / (region - 1)) @ rotation @ np.diag((out - 1) / 2)
    rev = np.eye(3)[::-1]
    theta = np.zeros((1, 3, 4))
    theta[0, :, :3] = rev @ theta_dhw @ rev  # grid_sample orders coordinates (w, h, d)
    grid = F.affine_grid(torch.as_tensor(theta, dtype=torch.float32), [1, 1, *size], align_corners=True)
    img = F.grid_sample(torch.from_numpy(np.ascontiguousarray(image))[None], grid, mode="bilinear",
                        padding_mode="zeros", align_corners=True)[0]
    lab = F.grid_sample(torch.from_numpy(label.astype(np.float32))[None, None], grid, mode="nearest",
                        padding_mode="zeros", align_corners=True)[0, 0]
    return img.numpy(), lab.numpy().round().astype(label.dtype)


def intensity_jitter(image: np.ndarray, rng: np.random.Generator, scale: float, shift: float) -> np.ndarray:
    """Per-channel ``x * a + b`` with ``a ~ U(1-scale, 1+scale)``, ``b ~ U(-shift, shift)``."""
    m = image.shape[0]
    a = rng.uniform(1 - scale, 1 + scale, size=m).astype(np.float32)
    b = rng.uniform(-shift, shift, size=m).astype(np.float32)
    return image * a[:, None, None, None] + b[:, None, None, None]
