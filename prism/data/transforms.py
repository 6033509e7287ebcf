"""Training augmentation as a list of named transforms (``data.augment``), built on MONAI's transforms.

Each transform works on one patch in a DataLoader worker: the image ``[M, D, H, W]`` (float32), the label
``[D, H, W]`` and which of the M modalities the case has. Spatial ones move image and label together (image
trilinear, label nearest); intensity ones change available modalities only, so a missing modality stays zero
(and the pipeline zeroes missing ones once more at the end).

``spatial`` (rotation, scaling, elastic deformation) resamples once, from a region of the volume read large enough
for the drawn transform, so the patch's corners hold real data; it must come first in a list. Every draw comes
from a ``numpy.random.RandomState`` per transform (MONAI's ``Randomizable.R``), re-seeded for each sample from the
sample's own generator (:meth:`AugmentPipeline.reseed`): a patch is a function of the stream's seed and the sample
number, whichever worker makes it, and a resumed run draws exactly what an uninterrupted one would.

MONAI is imported when a pipeline is built, not when a config is validated.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

import numpy as np
import pydantic
import torch
from pydantic_core import PydanticCustomError

Probability = Annotated[float, pydantic.Field(ge=0, le=1)]


def _ordered(value: tuple[float, float]) -> tuple[float, float]:
    if value[0] > value[1]:
        raise PydanticCustomError("range_order", "a range (low, high) needs low <= high")
    return value


#: a closed range ``(low, high)`` of positive numbers
PositiveRange = Annotated[tuple[Annotated[float, pydantic.Field(gt=0)], Annotated[float, pydantic.Field(gt=0)]],
                          pydantic.AfterValidator(_ordered)]
#: a closed range ``(low, high)`` of numbers >= 0
NonNegativeRange = Annotated[tuple[Annotated[float, pydantic.Field(ge=0)], Annotated[float, pydantic.Field(ge=0)]],
                             pydantic.AfterValidator(_ordered)]
#: a closed range ``(low, high)``
Range = Annotated[tuple[float, float], pydantic.AfterValidator(_ordered)]


def draw_factor(R: np.random.RandomState, low: float, high: float) -> float:
    """A multiplier from ``[low, high]``; when the range holds 1, below and above 1 are equally likely.

    nnU-Net's ``BGContrast`` (batchgeneratorsv2, ``transforms/intensity/contrast.py``): for (0.7, 1.5) a gamma
    < 1 is as likely as one > 1, though the range above 1 is wider.
    """
    below = R.rand() < 0.5
    if low < 1 < high:
        return float(R.uniform(low, 1.0) if below else R.uniform(1.0, high))
    return float(R.uniform(low, high))


@dataclass
class PatchSample:
    """One patch on its way through the transforms.

    Attributes:
        image: ``[M, D, H, W]`` float32, one channel per modality.
        label: ``[D, H, W]`` integer labels.
        available: ``[M]`` bool, the modalities the case has (the others are zero and stay zero).
    """

    image: torch.Tensor
    label: torch.Tensor
    available: torch.Tensor


def _plain(x: torch.Tensor) -> torch.Tensor:
    """A MONAI MetaTensor as a plain tensor (no copy)."""
    return x.as_tensor() if hasattr(x, "as_tensor") else x


class PatchTransform:
    """A transform of :class:`PatchSample`, drawing from its own ``R`` (``numpy.random.RandomState``).

    ``R`` is shared with the MONAI randomizable transforms the subclass wraps (listed in ``_randomizable``), so
    :meth:`set_random_state` re-seeds every draw the transform makes.
    """

    #: True for a transform that moves voxels (it may need a larger region than the patch: see ``spatial``)
    resamples = False

    def __init__(self) -> None:
        self.R = np.random.RandomState()
        self._randomizable: list[Any] = []

    def set_random_state(self, seed: int) -> None:
        """Seed ``R`` (and every wrapped MONAI transform's, through MONAI's ``Randomizable.set_random_state``)."""
        self.R = np.random.RandomState(seed)
        for t in self._randomizable:
            t.set_random_state(state=self.R)

    def __call__(self, sample: PatchSample) -> PatchSample:
        raise NotImplementedError


class ChannelTransform(PatchTransform):
    """An intensity transform applied, with probability ``probability``, to each available modality with
    probability ``channel_probability``, each with a value drawn for it (nnU-Net's ``p_per_channel`` with
    ``synchronize_channels=False``). A channel's draws are made whether or not the case has it, so they do not
    depend on which modalities are missing."""

    def __init__(self, probability: float, channel_probability: float) -> None:
        super().__init__()
        self.probability = probability
        self.channel_probability = channel_probability

    def draw(self) -> Any:
        """Draw one channel's random values (called for every channel chosen, available or not); what it returns
        is passed to :meth:`apply`."""
        raise NotImplementedError

    def apply(self, channel: torch.Tensor, value: Any) -> torch.Tensor:
        """Transform one channel ``[1, D, H, W]`` with what :meth:`draw` returned."""
        raise NotImplementedError

    def __call__(self, sample: PatchSample) -> PatchSample:
        if not self.R.rand() < self.probability:
            return sample
        chosen = self.R.rand(sample.image.shape[0]) < self.channel_probability
        image = sample.image
        for c in np.flatnonzero(chosen):
            value = self.draw()
            if sample.available[c]:
                image[c:c + 1] = _plain(self.apply(image[c:c + 1], value))
        return sample


class GaussianNoise(PatchTransform):
    """Additive Gaussian noise: one field, its standard deviation drawn from U(0, std), added to every available
    modality (MONAI ``RandGaussianNoise``; nnU-Net ``GaussianNoiseTransform`` with ``synchronize_channels=True``,
    variance range (0, 0.1), which it uses as the standard deviation, and one field for all channels).

    Args:
        probability: chance that a sample gets noise (nnU-Net 0.1).
        std: the largest standard deviation (nnU-Net 0.1).
    """

    def __init__(self, probability: Probability = 0.1,
                 std: Annotated[float, pydantic.Field(ge=0)] = 0.1) -> None:
        super().__init__()
        from monai.transforms import RandGaussianNoise

        self.probability = probability
        self.noise = RandGaussianNoise(prob=1.0, mean=0.0, std=std, sample_std=True)
        self._randomizable = [self.noise]

    def __call__(self, sample: PatchSample) -> PatchSample:
        if not self.R.rand() < self.probability:
            return sample
        field = _plain(self.noise(torch.zeros((1, *sample.image.shape[1:]), dtype=sample.image.dtype)))
        index = torch.nonzero(sample.available).flatten()
        sample.image[index] += field
        return sample


class GaussianBlur(ChannelTransform):
    """Gaussian smoothing of a modality, one sigma per axis drawn from ``sigma``, image edges reflected (nnU-Net
    ``GaussianBlurTransform``: sigma (0.5, 1), each axis and modality its own; MONAI ``RandGaussianSmooth`` draws
    the same way).

    Smoothing is ``scipy.ndimage.gaussian_filter`` (truncated at 4 sigma, as MONAI's ``GaussianFilter``), not
    MONAI's ``GaussianSmooth``: on one 128^3 channel and one CPU thread it took 39 ms against 140 ms (80^3: 4.9
    against 7.6 ms), which would make blurring about a third of the nnunet list's time per 128^3 patch instead of
    a tenth (``benchmarks/bench_augment.py --breakdown``).

    Args:
        probability: chance that a sample is blurred (nnU-Net 0.2).
        channel_probability: chance for each modality, given the sample is (nnU-Net 0.5).
        sigma: range of the Gaussian's standard deviation, in voxels (nnU-Net (0.5, 1)).
    """

    def __init__(self, probability: Probability = 0.2, channel_probability: Probability = 0.5,
                 sigma: PositiveRange = (0.5, 1.0)) -> None:
        super().__init__(probability, channel_probability)
        self.sigma = sigma

    def draw(self) -> list[float]:
        return [float(v) for v in self.R.uniform(*self.sigma, size=3)]

    def apply(self, channel: torch.Tensor, value: list[float]) -> torch.Tensor:
        from scipy.ndimage import gaussian_filter

        return torch.from_numpy(gaussian_filter(channel[0].numpy(), value, truncate=4.0))[None]


class Brightness(ChannelTransform):
    """Multiplicative brightness: a modality times a factor drawn from ``factor`` (MONAI ``ScaleIntensity``;
    nnU-Net ``MultiplicativeBrightnessTransform``, (0.75, 1.25)).

    Args:
        probability: chance that a sample is changed (nnU-Net 0.15).
        channel_probability: chance for each modality, given the sample is (nnU-Net 1).
        factor: range of the multiplier; below and above 1 equally likely when it holds 1 (nnU-Net (0.75, 1.25)).
    """

    def __init__(self, probability: Probability = 0.15, channel_probability: Probability = 1.0,
                 factor: PositiveRange = (0.75, 1.25)) -> None:
        super().__init__(probability, channel_probability)
        self.factor = factor

    def draw(self) -> float:
        return draw_factor(self.R, *self.factor)

    def apply(self, channel: torch.Tensor, value: float) -> torch.Tensor:
        from monai.transforms import ScaleIntensity

        return ScaleIntensity(minv=None, maxv=None, factor=value - 1.0)(channel)


class ShiftIntensity(ChannelTransform):
    """Additive brightness: a modality plus an offset drawn from U(``offset``) (MONAI ``ShiftIntensity``). Not in
    nnU-Net's default pipeline.

    Args:
        probability: chance that a sample is changed.
        channel_probability: chance for each modality, given the sample is.
        offset: range of the offset, in the normalised intensity units of the cache.
    """

    def __init__(self, probability: Probability = 0.15, channel_probability: Probability = 1.0,
                 offset: Range = (-0.1, 0.1)) -> None:
        super().__init__(probability, channel_probability)
        self.offset = offset

    def draw(self) -> float:
        return float(self.R.uniform(*self.offset))

    def apply(self, channel: torch.Tensor, value: float) -> torch.Tensor:
        from monai.transforms import ShiftIntensity as MonaiShift

        return MonaiShift(offset=value)(channel)


class Contrast(ChannelTransform):
    """Contrast about the mean: ``(x - mean) * f + mean``, clipped to the modality's former range (MONAI
    ``ScaleIntensityFixedMean`` with ``preserve_range``; nnU-Net ``ContrastTransform``, (0.75, 1.25),
    ``preserve_range=True``).

    Args:
        probability: chance that a sample is changed (nnU-Net 0.15).
        channel_probability: chance for each modality, given the sample is (nnU-Net 1).
        factor: range of f; below and above 1 equally likely when it holds 1 (nnU-Net (0.75, 1.25)).
        preserve_range: clip to the modality's minimum and maximum before the change (nnU-Net true).
    """

    def __init__(self, probability: Probability = 0.15, channel_probability: Probability = 1.0,
                 factor: PositiveRange = (0.75, 1.25), preserve_range: bool = True) -> None:
        super().__init__(probability, channel_probability)
        self.factor = factor
        self.preserve_range = preserve_range

    def draw(self) -> float:
        return draw_factor(self.R, *self.factor)

    def apply(self, channel: torch.Tensor, value: float) -> torch.Tensor:
        from monai.transforms import ScaleIntensityFixedMean

        return ScaleIntensityFixedMean(factor=value - 1.0, preserve_range=self.preserve_range, fixed_mean=True)(
            channel)


def _at_most_one(value: tuple[float, float]) -> tuple[float, float]:
    if value[1] > 1:
        raise PydanticCustomError("zoom_range", "a zoom above 1 would not lower the resolution")
    return value


class LowResolution(ChannelTransform):
    """Simulated low resolution: a modality downsampled by a zoom drawn from ``zoom`` (nearest) and upsampled
    back (trilinear) (MONAI ``RandSimulateLowResolution``; nnU-Net ``SimulateLowResolutionTransform``, scale
    (0.5, 1), the same for every axis).

    Args:
        probability: chance that a sample is changed (nnU-Net 0.25).
        channel_probability: chance for each modality, given the sample is (nnU-Net 0.5).
        zoom: range of the zoom factor (nnU-Net (0.5, 1)).
    """

    def __init__(self, probability: Probability = 0.25, channel_probability: Probability = 0.5,
                 zoom: Annotated[PositiveRange, pydantic.AfterValidator(_at_most_one)] = (0.5, 1.0)
                 ) -> None:
        super().__init__(probability, channel_probability)
        from monai.transforms import RandSimulateLowResolution

        self.lowres = RandSimulateLowResolution(prob=1.0, downsample_mode="nearest", upsample_mode="trilinear",
                                                zoom_range=zoom)
        self._randomizable = [self.lowres]

    def draw(self) -> None:
        self.lowres.randomize(None)  # the zoom, kept by the MONAI transform for the call below

    def apply(self, channel: torch.Tensor, value: None) -> torch.Tensor:
        return self.lowres(channel, randomize=False)


class Gamma(ChannelTransform):
    """Gamma: ``x`` rescaled to [0, 1] over the modality's range, raised to a gamma drawn from ``gamma`` and scaled
    back, with the mean and standard deviation kept; ``invert`` applies it to ``-x`` (MONAI ``AdjustContrast``;
    nnU-Net ``GammaTransform``, (0.7, 1.5), ``p_retain_stats=1``, once inverted with probability 0.1 and once
    not with probability 0.3).

    Args:
        probability: chance that a sample is changed (nnU-Net 0.3; 0.1 for the inverted one).
        channel_probability: chance for each modality, given the sample is (nnU-Net 1).
        gamma: range of gamma; below and above 1 equally likely when it holds 1 (nnU-Net (0.7, 1.5)).
        invert: transform the inverted image (-x), then invert back.
        retain_stats: restore the modality's mean and standard deviation afterwards (nnU-Net true).
    """

    def __init__(self, probability: Probability = 0.3, channel_probability: Probability = 1.0,
                 gamma: PositiveRange = (0.7, 1.5), invert: bool = False, retain_stats: bool = True) -> None:
        super().__init__(probability, channel_probability)
        from monai.transforms import AdjustContrast

        self.gamma = gamma
        self.adjust = AdjustContrast(gamma=1.0, invert_image=invert, retain_stats=retain_stats)

    def draw(self) -> float:
        return draw_factor(self.R, *self.gamma)

    def apply(self, channel: torch.Tensor, value: float) -> torch.Tensor:
        return self.adjust(channel, gamma=value)


class Mirror(PatchTransform):
    """Flips image and label along each of ``axes`` with probability ``probability`` each (MONAI ``Flip``;
    nnU-Net ``MirrorTransform``, axes (0, 1, 2), 0.5 each).

    Args:
        axes: the spatial axes (0, 1, 2 for D, H, W) that may be flipped.
        probability: chance of a flip along each axis.
    """

    def __init__(self, axes: Annotated[tuple[Annotated[int, pydantic.Field(ge=0, le=2)], ...],
                                       pydantic.Field(min_length=1, max_length=3)] = (0, 1, 2),
                 probability: Probability = 0.5) -> None:
        super().__init__()
        self.axes = tuple(axes)
        self.probability = probability

    def __call__(self, sample: PatchSample) -> PatchSample:
        from monai.transforms import Flip

        flips = self.R.rand(len(self.axes)) < self.probability
        axes = [a for a, f in zip(self.axes, flips, strict=True) if f]
        if axes:
            flip = Flip(spatial_axis=axes)
            sample.image = _plain(flip(sample.image))
            sample.label = _plain(flip(sample.label[None]))[0]
        return sample


class Spatial(PatchTransform):
    """Rotation, scaling and elastic deformation in one resampling, image trilinear and label nearest, outside the
    volume zero (nnU-Net ``SpatialTransform``: rotation 0.2 of the samples, each axis U(-30, 30) degrees; scaling
    0.2, one factor U(0.7, 1.4) for all axes; elastic deformation off). Coordinates are those of the sampling grid,
    so a scale above 1 shows more of the volume (structures get smaller), as in nnU-Net. Built on MONAI's
    ``create_rotate``, ``create_grid``, ``GaussianFilter`` and ``Resample``.

    The region read from the volume is the bounding box of the drawn grid (plus a voxel for interpolation),
    clipped to the volume: a sample drawn without rotation, scaling or deformation is a plain crop.

    Args:
        rotate_probability: chance that a sample is rotated (nnU-Net 0.2).
        rotate_degrees: each axis is rotated by an angle from U(-r, r) degrees (nnU-Net 30).
        scale_probability: chance that a sample is scaled (nnU-Net 0.2).
        scale: range of the scale factor of the sampling grid (nnU-Net (0.7, 1.4)).
        scale_isotropic: one factor for all axes (nnU-Net) rather than one per axis.
        elastic_probability: chance of an elastic deformation (nnU-Net 0: off).
        elastic_sigma: range of the smoothness of the displacement field, in voxels.
        elastic_magnitude: range of the largest displacement, in voxels.
    """

    resamples = True

    def __init__(self, rotate_probability: Probability = 0.2,
                 rotate_degrees: Annotated[float, pydantic.Field(ge=0, le=180)] = 30.0,
                 scale_probability: Probability = 0.2, scale: PositiveRange = (0.7, 1.4),
                 scale_isotropic: bool = True, elastic_probability: Probability = 0.0,
                 elastic_sigma: PositiveRange = (9.0, 13.0), elastic_magnitude: NonNegativeRange = (0.0, 8.0)
                 ) -> None:
        super().__init__()
        from monai.transforms import Resample

        self.rotate_probability, self.rotate_degrees = rotate_probability, rotate_degrees
        self.scale_probability, self.scale, self.scale_isotropic = scale_probability, scale, scale_isotropic
        self.elastic_probability, self.elastic_sigma = elastic_probability, elastic_sigma
        self.elastic_magnitude = elastic_magnitude
        self.resample = Resample(mode="bilinear", padding_mode="zeros", norm_coords=True, dtype=torch.float32)

    def draw(self, size: Sequence[int]) -> torch.Tensor | None:
        """The sampling grid ``[3, *size]`` (voxel coordinates about the patch centre), or None for a plain crop.

        Draws, in order: rotation (chance, 3 angles), scaling (chance, 1 or 3 factors), elastic (chance, sigma,
        magnitude, field)."""
        rotate = self.R.rand() < self.rotate_probability
        angles = np.deg2rad(self.R.uniform(-self.rotate_degrees, self.rotate_degrees, size=3)) if rotate else None
        scaled = self.R.rand() < self.scale_probability
        scales = None
        if scaled:
            scales = np.full(3, self.R.uniform(*self.scale)) if self.scale_isotropic else self.R.uniform(
                *self.scale, size=3)
        offsets = self._elastic(size) if self.R.rand() < self.elastic_probability else None
        if angles is None and scales is None and offsets is None:
            return None
        from monai.transforms.utils import create_grid, create_rotate

        grid = torch.as_tensor(create_grid(list(size), homogeneous=False, dtype=np.float32, backend="numpy"))
        if offsets is not None:  # deform first, then rotate and scale (nnU-Net's order)
            grid = grid + offsets
        matrix = np.eye(3)
        if angles is not None:
            matrix = np.asarray(create_rotate(3, angles.tolist()))[:3, :3]
        if scales is not None:
            matrix = matrix @ np.diag(scales)
        if angles is not None or scales is not None:
            grid = torch.einsum("ij,j...->i...", torch.as_tensor(matrix, dtype=torch.float32), grid)
        return grid

    def _elastic(self, size: Sequence[int]) -> torch.Tensor:
        """A smooth displacement field ``[3, *size]`` whose largest component is the drawn magnitude.

        Uniform noise is smoothed on a grid coarser by ``s = max(1, sigma // 4)`` and upsampled (trilinear): a
        Gaussian of sigma >= 4 voxels passes almost nothing a grid of step sigma / 4 cannot hold, and the coarse
        grid makes the smoothing ``s^3`` times cheaper."""
        from monai.networks.layers import GaussianFilter

        sigma = float(self.R.uniform(*self.elastic_sigma))
        magnitude = float(self.R.uniform(*self.elastic_magnitude))
        step = max(1, int(sigma // 4))
        coarse = [max(2, math.ceil(s / step)) for s in size]
        noise = torch.as_tensor(self.R.uniform(-1.0, 1.0, size=(3, *coarse)), dtype=torch.float32)
        smooth = GaussianFilter(3, sigma / step)(noise[:, None])[:, 0]
        field = torch.nn.functional.interpolate(smooth[None], size=list(size), mode="trilinear",
                                                align_corners=True)[0]
        peak = field.flatten(1).abs().amax(1).clamp_min(1e-12)
        return field * (magnitude / peak)[:, None, None, None]

    @staticmethod
    def reach(grid: torch.Tensor) -> np.ndarray:
        """How far from the patch centre the grid samples, per axis (voxels)."""
        return grid.flatten(1).abs().amax(1).numpy()

    def resample_region(self, read: Callable[[tuple[int, ...], tuple[int, ...]], tuple[np.ndarray, np.ndarray]],
                        grid: torch.Tensor, start: Sequence[int], size: Sequence[int], shape: Sequence[int],
                        channels: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The patch at ``start`` of ``size`` from a volume of ``shape``, resampled along ``grid`` (:meth:`draw`).

        Only the bounding box of the grid inside the volume is read; what the grid samples outside it is zero.

        Args:
            read: ``read(start, size) -> (image [M, ...], label [...])``, a box inside the volume.
            grid: ``[3, *size]`` voxel coordinates about the patch centre.
            start, size: the patch's first voxel and size; ``shape``: the volume's size.
            channels: M (for a grid that misses the volume altogether).

        Returns:
            image ``[M, *size]`` float32 and label ``[*size]`` uint8.
        """
        centre = np.asarray(start, float) + (np.asarray(size, float) - 1) / 2
        reach = self.reach(grid) + 1  # one voxel more: trilinear reads both neighbours
        lo = np.maximum(np.floor(centre - reach), 0).astype(int)
        hi = np.minimum(np.ceil(centre + reach) + 1, np.asarray(shape)).astype(int)
        if np.any(hi <= lo):  # a patch larger than a small volume, shrunk so much that it samples none of it
            return torch.zeros((channels, *size), dtype=torch.float32), torch.zeros(tuple(size), dtype=torch.uint8)
        image, label = read(tuple(int(v) for v in lo), tuple(int(v) for v in hi - lo))
        # Resample reads coordinates about the centre of the array it is given: the box's, not the patch's
        shift = torch.as_tensor(centre - (lo + hi - 1) / 2, dtype=torch.float32)[:, None, None, None]
        grid = grid + shift
        img = _plain(self.resample(torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)), grid=grid))
        lab = _plain(self.resample(torch.from_numpy(label.astype(np.float32))[None], grid=grid, mode="nearest"))[0]
        return img, lab.round().to(torch.uint8)

    def __call__(self, sample: PatchSample) -> PatchSample:
        raise RuntimeError("'spatial' resamples while the patch is read: AugmentPipeline.make_patch applies it")


#: every transform ``data.augment`` may name, with the class whose keyword arguments are its options
TRANSFORMS: dict[str, type[PatchTransform]] = {
    "spatial": Spatial,
    "mirror": Mirror,
    "gaussian_noise": GaussianNoise,
    "gaussian_blur": GaussianBlur,
    "brightness": Brightness,
    "shift_intensity": ShiftIntensity,
    "contrast": Contrast,
    "low_resolution": LowResolution,
    "gamma": Gamma,
}

#: ``data.augment: nnunet``: nnU-Net's default 3D training pipeline (nnU-Net v2,
#: ``nnunetv2/training/nnUNetTrainer/nnUNetTrainer.py``, ``get_training_transforms``), in its order; each
#: transform's defaults are nnU-Net's values, the two gammas differ in probability and inversion
NNUNET: tuple[dict[str, Any], ...] = (
    {"name": "spatial", "options": {}},
    {"name": "gaussian_noise", "options": {}},
    {"name": "gaussian_blur", "options": {}},
    {"name": "brightness", "options": {}},
    {"name": "contrast", "options": {}},
    {"name": "low_resolution", "options": {}},
    {"name": "gamma", "options": {"probability": 0.1, "invert": True}},
    {"name": "gamma", "options": {"probability": 0.3}},
    {"name": "mirror", "options": {}},
)

#: preset names ``data.augment`` takes besides a list; ``light`` is prism's own pipeline (``data.flip``,
#: ``data.rotate_*``, ``data.intensity_*``), the others name a list
PRESETS: dict[str, tuple[dict[str, Any], ...] | None] = {"light": None, "nnunet": NNUNET}


def check_steps(steps: Sequence[Mapping[str, Any]], field: str = "data.augment") -> list[dict[str, Any]]:
    """Validate a transform list: known names, valid options, ``spatial`` at most once and first.

    Args:
        steps: ``[{"name": ..., "options": {...}}, ...]``.
        field: the config field, for messages.

    Returns:
        the steps with every option written out: those given, validated (lists become tuples), and the others at
        their defaults, so a run's ``config.yaml`` says all the transforms did.

    Raises:
        ValueError: one line naming ``field.<i>`` or ``field.<i>.options.<option>``: an unknown transform (with
            close matches), an unknown option (with close matches), a wrong value, ``spatial`` twice or not first.
    """
    from ..errors import PluginError
    from ..registry.options import option_specs, validate_options

    out = []
    for i, step in enumerate(steps):
        name = step["name"]
        cls = TRANSFORMS.get(name)
        if cls is None:
            close = difflib.get_close_matches(str(name), list(TRANSFORMS), n=3, cutoff=0.5)
            hint = f"did you mean {', '.join(repr(c) for c in close)}? " if close else ""
            raise ValueError(f"{field}.{i}.name: unknown transform {name!r}; {hint}transforms: "
                             f"{', '.join(TRANSFORMS)}")
        try:
            options = validate_options(cls, 0, step.get("options") or {}, owner=f"transform '{name}'",
                                       field=f"{field}.{i}.options")
        except PluginError as exc:
            raise ValueError(str(exc)) from None
        if cls.resamples and i:
            raise ValueError(f"{field}.{i}: '{name}' must come first (it resamples the patch as it is read from "
                             "the volume)")
        defaults = {o.name: o.default for o in option_specs(cls, 0)}
        out.append({"name": name, "options": {**defaults, **options}})
    return out


def resolve_augment(value: Any, field: str = "data.augment") -> Any:
    """``data.augment`` as given -> ``"light"`` or a validated transform list (a preset name is expanded, so a run's
    ``config.yaml`` pins the transforms it trained with).

    Raises:
        ValueError: one line: an unknown preset (with close matches) or a bad list (:func:`check_steps`).
    """
    if isinstance(value, str):
        if value not in PRESETS:
            close = difflib.get_close_matches(value, list(PRESETS), n=2, cutoff=0.5)
            hint = f"did you mean {', '.join(repr(c) for c in close)}? " if close else ""
            raise ValueError(f"{field}: unknown preset {value!r}; {hint}presets: {', '.join(PRESETS)}, or a list "
                             "of transforms")
        steps = PRESETS[value]
        return value if steps is None else check_steps(steps, field)
    if isinstance(value, list | tuple):
        return check_steps(value, field)
    raise ValueError(f"{field}: a preset name ({', '.join(PRESETS)}) or a list of transforms (got {value!r})")


class AugmentPipeline:
    """A list of transforms applied to each training patch (``data.augment`` as a list).

    Args:
        steps: ``[{"name": ..., "options": {...}}, ...]``, validated (:func:`check_steps`).

    Raises:
        ValueError: a bad list (see :func:`check_steps`).
    """

    def __init__(self, steps: Sequence[Mapping[str, Any]]) -> None:
        self.steps = check_steps(steps)
        self.transforms: list[PatchTransform] = [TRANSFORMS[s["name"]](**s["options"]) for s in self.steps]

    def __repr__(self) -> str:
        return f"AugmentPipeline({[s['name'] for s in self.steps]})"

    def reseed(self, seed: int) -> None:
        """Seed every transform's generator from ``seed`` (each its own stream: changing one transform's options
        leaves the others' draws alone)."""
        states = np.random.SeedSequence(int(seed)).spawn(len(self.transforms))
        for t, s in zip(self.transforms, states, strict=True):
            t.set_random_state(int(s.generate_state(1)[0]))

    def make_patch(self, read: Callable[[tuple[int, ...], tuple[int, ...]], tuple[np.ndarray, np.ndarray]],
                   start: Sequence[int], size: Sequence[int], shape: Sequence[int], available: Sequence[bool],
                   seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The augmented patch at ``start`` of ``size``.

        Args:
            read: ``read(start, size) -> (image [M, ...] float32, label [...])`` of the case; ``start`` may lie
                outside the volume (zeros there).
            start, size: the patch's first voxel and its size; ``shape``: the volume's size.
            available: the case's modalities (``[M]`` bool).
            seed: the sample's seed (drawn from the sample's generator).

        Returns:
            image ``[M, *size]`` float32 (missing modalities zero) and label ``[*size]`` int64.
        """
        from monai.data import get_track_meta, set_track_meta

        tracking = get_track_meta()
        set_track_meta(False)  # plain tensors: MONAI's metadata (affines, history) is not needed on a patch
        try:
            return self._make_patch(read, start, size, shape, available, seed)
        finally:
            set_track_meta(tracking)

    def _make_patch(self, read: Callable[[tuple[int, ...], tuple[int, ...]], tuple[np.ndarray, np.ndarray]],
                    start: Sequence[int], size: Sequence[int], shape: Sequence[int], available: Sequence[bool],
                    seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        self.reseed(seed)
        transforms = self.transforms
        spatial = transforms[0] if transforms and isinstance(transforms[0], Spatial) else None
        grid = None
        if spatial is not None:
            grid = spatial.draw(size)
            transforms = transforms[1:]
        if spatial is not None and grid is not None:
            image, label = spatial.resample_region(read, grid, start, size, shape, len(available))
        else:
            img, lab = read(tuple(start), tuple(size))
            image = torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32))
            label = torch.from_numpy(np.ascontiguousarray(lab))
        avail = torch.as_tensor(list(available), dtype=torch.bool)
        sample = PatchSample(image=image, label=label, available=avail)
        for t in transforms:
            sample = t(sample)
        image = sample.image.contiguous() * avail[:, None, None, None].to(sample.image.dtype)
        return image.to(torch.float32), sample.label.contiguous().to(torch.int64)
