"""BraTS-like synthetic phantoms, seeded and reproducible, made so that no region is readable off one contrast.

Anatomy: a brain-shaped, slightly irregular ellipsoid with a grey-matter cortex, white matter interleaved with
deep grey matter, ventricles and sulcal CSF, white-matter hyperintensities (bright on FLAIR and T2, as on real
MRI, and patchy over a large part of the white matter) and thin
enhancing vessels (bright on T1ce only). Tumour: one to three irregular foci (a larger first one), each edema
(label 2, spreading further along white matter) around a core whose enhancing parts (label 3) are patchy and
whose necrosis (label 1) looks like CSF in every contrast; a secondary focus may not enhance at all. The labels
nest as in BraTS: WT = {1, 2, 3} contains TC = {1, 3} contains ET = {3}.

Intensities overlap on purpose (see ``_INTENSITY``): on FLAIR edema is as bright as white-matter hyperintensities
and enhancing tumour as grey matter; on T2 necrosis is as bright as CSF; on T1ce enhancing tumour is as bright as
vessels; white-matter hyperintensities look like edema in every contrast. Each region needs two contrasts or spatial
context: edema is FLAIR-bright *and* T2-bright, and only its place around a core tells it from a hyperintensity;
necrosis is
CSF-like but inside a lesion; enhancing tumour is T1ce-bright in a blob, not a thin line. Only T1ce shows
enhancement and only FLAIR and T2 show edema, so a model loses ET without T1ce and WT without FLAIR and T2, as on
real MRI. One or two edema-like lesions without a core (gliosis, old infarcts: label 0) look like edema in every
contrast, so the whole tumour is told from them only by context (an edema surrounds a core). Tissue texture, a
strong multiplicative bias field per contrast, partial-volume blur and noise are added, then each volume is
z-scored over the brain as preprocessing would do.

With ``sites > 1`` case ``i`` comes from site ``i % sites``; every site but site 0 has its own contrast curve
(gamma per modality), noise level, bias strength, gain and resolution (a thicker slice along one axis). Phantoms go
straight to a cache (``write_synthetic_cache``) or to a BraTS-layout NIfTI folder (``write_synthetic_nifti``) that
``prism-data preprocess`` reads like real data.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from prism.modalities import BRATS_MODALITIES

#: Bumped whenever the phantoms change, so that cached demo data made by an older generator is not reused.
PHANTOM_VERSION = 4

_CLASSES = ("gm", "wm", "csf", "wmh", "vessel", "necrosis", "edema", "enhancing")
# intensity per class and modality before bias, texture and noise; None: the underlying tissue's value plus
# the offset in _OFFSET (the lesion is nearly invisible there)
_INTENSITY: dict[str, dict[str, float | None]] = {
    "flair": {"gm": 0.55, "wm": 0.45, "csf": 0.10, "wmh": 0.78, "vessel": None, "necrosis": 0.30, "edema": 0.76,
              "enhancing": 0.58},
    "t1ce": {"gm": 0.45, "wm": 0.60, "csf": 0.15, "wmh": 0.58, "vessel": 0.95, "necrosis": 0.18, "edema": None,
             "enhancing": 0.95},
    "t1": {"gm": 0.45, "wm": 0.65, "csf": 0.15, "wmh": 0.60, "vessel": None, "necrosis": 0.20, "edema": None,
           "enhancing": 0.40},
    "t2": {"gm": 0.60, "wm": 0.45, "csf": 1.10, "wmh": 0.86, "vessel": None, "necrosis": 1.02, "edema": 0.88,
           "enhancing": 0.80},
}
_OFFSET = {"flair": {}, "t1ce": {"edema": -0.04}, "t1": {"edema": -0.06}, "t2": {}}


#: the structure classes ``SynthSettings.extra_classes`` adds to the BraTS labels
EXTRA_LABELS = {4: "csf", 5: "white-matter hyperintensity"}


@dataclass(frozen=True)
class SynthSettings:
    """What a synthetic dataset is made of (``noise``: Gaussian sd; ``bias``: log-amplitude of the bias field)."""

    cases: int = 24
    shape: tuple[int, int, int] = (48, 48, 48)
    seed: int = 0
    noise: float = 0.07
    bias: float = 0.3
    sites: int = 1
    #: also label the CSF (4) and the white-matter hyperintensities (5): structure classes to hold out in
    #: few-shot class tasks (the images are the same)
    extra_classes: bool = False


def _smooth_field(gen: torch.Generator, shape: Sequence[int], coarse: int = 4) -> torch.Tensor:
    """A smooth random field in [-1, 1] (trilinear upsampling of a coarse random grid)."""
    grid = torch.rand((1, 1, coarse, coarse, coarse), generator=gen) * 2 - 1
    return F.interpolate(grid, size=tuple(shape), mode="trilinear", align_corners=True)[0, 0]


def _blur(x: torch.Tensor) -> torch.Tensor:
    """A light 3x3x3 box blur (partial-volume effect)."""
    return F.avg_pool3d(x[None, None], 3, stride=1, padding=1, count_include_pad=False)[0, 0]


def _thick_slices(x: torch.Tensor, axis: int, factor: int) -> torch.Tensor:
    """Lower resolution along ``axis``: average ``factor`` neighbouring slices (a thicker acquisition slice)."""
    if factor <= 1:
        return x
    kernel = [1, 1, 1]
    kernel[axis] = factor
    pad = [0, 0, 0, 0, 0, 0]
    pad[2 * (2 - axis)] = (factor - 1) // 2
    pad[2 * (2 - axis) + 1] = factor // 2
    padded = F.pad(x[None, None], pad, mode="replicate")
    return F.avg_pool3d(padded, tuple(kernel), stride=1)[0, 0]


@dataclass(frozen=True)
class SiteProfile:
    """How one acquisition site differs: contrast exponent per modality, noise, bias and gain multipliers, and a
    slice thickness (``thickness`` voxels along ``axis``)."""

    gamma: tuple[float, ...]
    noise: float
    bias: float
    gain: float = 1.0
    thickness: int = 1
    axis: int = 0


def site_profile(site: int, modalities: Sequence[str] = BRATS_MODALITIES) -> SiteProfile:
    """Site 0 is the reference (identity); other sites draw a fixed profile from their number."""
    if site == 0:
        return SiteProfile(gamma=(1.0,) * len(modalities), noise=1.0, bias=1.0)
    rng = np.random.default_rng(10_007 * site)
    return SiteProfile(gamma=tuple(float(g) for g in rng.uniform(0.6, 1.6, len(modalities))),
                       noise=float(rng.uniform(1.3, 2.2)), bias=float(rng.uniform(0.5, 1.6)),
                       gain=float(rng.uniform(0.8, 1.3)), thickness=int(rng.integers(1, 4)),
                       axis=int(rng.integers(0, 3)))


def make_case(index: int, settings: SynthSettings, modalities: Sequence[str] = BRATS_MODALITIES
              ) -> tuple[np.ndarray, np.ndarray, str]:
    """One phantom: image float32 ``[M, D, H, W]`` (z-scored over the brain), label uint8, site name."""
    raw, label, brain, site = make_raw_case(index, settings, modalities)
    images = []
    for img in torch.from_numpy(raw):
        img = img.clone()
        vals = img[brain]
        img[brain] = (vals - vals.mean()) / vals.std().clamp_min(1e-6)
        images.append(img)
    return torch.stack(images).numpy().astype(np.float32), label, site


def _anatomy(gen: torch.Generator, shape: Sequence[int], z: torch.Tensor, y: torch.Tensor, x: torch.Tensor,
             u) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Brain mask and tissue masks (gm, wm, csf, wmh, vessel) that partition the brain."""
    radii = (u(0.78, 0.9), u(0.8, 0.92), u(0.72, 0.86))
    radial = torch.sqrt((z / radii[0]) ** 2 + (y / radii[1]) ** 2 + (x / radii[2]) ** 2)
    radial = radial * (1 + 0.04 * _smooth_field(gen, shape, coarse=5))
    brain = radial < 1.0
    deep_grey = _smooth_field(gen, shape, coarse=6) < -0.45
    wm = brain & (radial < 0.8 + 0.06 * _smooth_field(gen, shape, coarse=8)) & ~deep_grey
    sulci = brain & (radial > 0.86) & (_smooth_field(gen, shape, coarse=9) > 0.35)
    shift = u(-0.05, 0.05)
    ventricles = brain & (((z / 0.22) ** 2 + ((y - shift) / 0.12) ** 2 + ((x - 0.12) / 0.1) ** 2 < 1)
                          | ((z / 0.22) ** 2 + ((y - shift) / 0.12) ** 2 + ((x + 0.12) / 0.1) ** 2 < 1))
    csf = sulci | ventricles
    wmh = wm & ~csf & (_smooth_field(gen, shape, coarse=10) > 0.25)
    f1, f2 = _smooth_field(gen, shape, coarse=7), _smooth_field(gen, shape, coarse=7)
    vessel = brain & ~csf & (f1.abs() < 0.05) & (f2.abs() < 0.12)  # thin lines where two surfaces cross
    gm = brain & ~wm & ~csf
    return brain, {"gm": gm & ~vessel, "wm": wm & ~csf & ~wmh & ~vessel, "csf": csf, "wmh": wmh & ~vessel,
                   "vessel": vessel}


def _tumour(gen: torch.Generator, shape: Sequence[int], z: torch.Tensor, y: torch.Tensor, x: torch.Tensor,
            brain: torch.Tensor, wm: torch.Tensor, u) -> tuple[torch.Tensor, torch.Tensor]:
    """Label map (0 background, 1 necrosis, 2 edema, 3 enhancing) of one to three irregular foci, and the mask of
    one or two edema-like mimics (no core, label 0) placed away from them."""
    foci = 1 + int(u(0, 1) < 0.5) + int(u(0, 1) < 0.2)
    label = torch.zeros(tuple(shape), dtype=torch.uint8)
    centres: list[tuple[list[float], float]] = []
    for k in range(foci):
        centre = [u(-0.4, 0.4) for _ in range(3)]
        dist = torch.sqrt((z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2)
        dist = dist * (1 + 0.35 * _smooth_field(gen, shape, coarse=5)) + 0.05 * _smooth_field(gen, shape, coarse=11)
        r_wt = u(0.34, 0.48) if k == 0 else u(0.16, 0.26)
        r_tc = r_wt * u(0.55, 0.75)
        r_nec = r_tc * u(0.3, 0.6)
        centres.append((centre, r_wt))
        edema = dist < r_wt * torch.where(wm, torch.tensor(1.25), torch.tensor(1.0))  # spreads along white matter
        core = dist < r_tc
        enhancing_focus = k == 0 or u(0, 1) < 0.6  # a secondary focus may be non-enhancing
        patchy = _smooth_field(gen, shape, coarse=6) > -0.3
        label[edema & (label == 0)] = 2
        if enhancing_focus:
            label[core & patchy] = 3
            label[core & ~patchy] = 1
        else:
            label[core] = 1
        label[dist < r_nec] = 1
    label[~brain] = 0
    mimic = torch.zeros(tuple(shape), dtype=torch.bool)
    for _ in range(1 + int(u(0, 1) < 0.7)):
        r = u(0.24, 0.34)
        for _try in range(8):  # a place clear of every tumour focus
            centre = [u(-0.5, 0.5) for _ in range(3)]
            gaps = [sum((a - b) ** 2 for a, b in zip(centre, c, strict=True)) ** 0.5 - r - rc for c, rc in centres]
            if min(gaps) > 0.1:
                break
        dist = torch.sqrt((z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2)
        mimic |= dist * (1 + 0.35 * _smooth_field(gen, shape, coarse=5)) < r
    return label, mimic & brain & (label == 0)


def make_raw_case(index: int, settings: SynthSettings, modalities: Sequence[str] = BRATS_MODALITIES
                  ) -> tuple[np.ndarray, np.ndarray, torch.Tensor, str]:
    """One phantom before normalisation: image float32 ``[M, D, H, W]`` (0 outside the brain), label uint8,
    brain mask, site name."""
    gen = torch.Generator().manual_seed(int(settings.seed) * 1_000_003 + int(index))
    shape = settings.shape
    axes = [torch.linspace(-1, 1, s) for s in shape]
    z, y, x = torch.meshgrid(*axes, indexing="ij")

    def u(lo: float, hi: float) -> float:
        return float(lo + (hi - lo) * torch.rand((), generator=gen))

    brain, tissue = _anatomy(gen, shape, z, y, x, u)
    label, mimic = _tumour(gen, shape, z, y, x, brain, tissue["wm"], u)
    lesion = {"necrosis": label == 1, "edema": (label == 2) | mimic, "enhancing": label == 3}
    site = index % max(settings.sites, 1)
    profile = site_profile(site, modalities)
    images = []
    for m, gamma in zip(modalities, profile.gamma, strict=True):
        values = _INTENSITY.get(m, {})
        img = torch.full(tuple(shape), 0.5)
        for name in ("gm", "wm", "csf", "wmh", "vessel"):
            value = values.get(name, 0.5)
            img[tissue[name]] = values.get("gm", 0.5) if value is None else value  # invisible vessels: grey matter
        texture = _smooth_field(gen, shape, coarse=10)
        img = img + 0.04 * texture  # tissue texture
        for name, region in lesion.items():
            value = values.get(name)
            img[region] = (img[region] + _OFFSET.get(m, {}).get(name, 0.0)) if value is None else (
                value + 0.05 * texture[region])
        img = _blur(img)
        img = _thick_slices(img, profile.axis, profile.thickness)
        if gamma != 1.0:
            img = img.clamp_min(0) ** gamma
        img = img * torch.exp(settings.bias * profile.bias * _smooth_field(gen, shape, coarse=3)) * profile.gain
        img = img + settings.noise * profile.noise * torch.randn(tuple(shape), generator=gen)
        img[~brain] = 0.0
        images.append(img)
    image = torch.stack(images).numpy().astype(np.float32)
    if settings.extra_classes:
        label[(label == 0) & tissue["csf"]] = 4
        label[(label == 0) & tissue["wmh"] & brain] = 5
    return image, label.numpy(), brain, f"site{site}"


def write_synthetic_cache(path: str, settings: SynthSettings, *, test_fraction: float = 0.25,
                          val_fraction: float = 0.0, hold_out_sites: Sequence[str] = (),
                          missing_rates: str | None = None) -> None:
    """Generate ``settings.cases`` phantoms into a prism cache at ``path`` with train/val/test splits.

    ``hold_out_sites`` (e.g. ``["site3"]``) puts those sites' cases in the split ``heldout`` and keeps them out of
    train/val/test. ``missing_rates`` (``mr2468`` or ``flair=0.6,...``) draws each training case's available
    modalities once (seeded by ``settings.seed``); other cases keep all four.

    Raises:
        DataError: an unknown site or bad missing rates.
    """
    from prism.data.availability import draw_availability, parse_missing_rates
    from prism.data.cache_format import BRATS_LABELS
    from prism.data.cache_writer import CacheWriter
    from prism.data.splits import hold_out_site_splits, make_splits

    ids = [f"synth_{i:04d}" for i in range(settings.cases)]
    sites = {case_id: f"site{i % max(settings.sites, 1)}" for i, case_id in enumerate(ids)}
    if hold_out_sites:
        splits = hold_out_site_splits(sites, list(hold_out_sites), seed=settings.seed, test_fraction=test_fraction,
                                      val_fraction=val_fraction)
    else:
        splits = make_splits(ids, seed=settings.seed, test_fraction=test_fraction, val_fraction=val_fraction)
    available = {c: (True,) * len(BRATS_MODALITIES) for c in ids}
    if missing_rates:
        rates = parse_missing_rates(missing_rates, BRATS_MODALITIES)
        available.update(draw_availability(splits.get("train", []), rates, BRATS_MODALITIES, seed=settings.seed))
    preprocessing = {"generator": "prism.data_tools.synthetic", "phantom_version": PHANTOM_VERSION,
                     **settings.__dict__,
                     "hold_out_sites": sorted(hold_out_sites), "missing_rates": missing_rates or ""}
    labels = {**BRATS_LABELS, **EXTRA_LABELS} if settings.extra_classes else BRATS_LABELS
    with CacheWriter(path, modalities=BRATS_MODALITIES, labels=labels, preprocessing=preprocessing,
                     seed=settings.seed) as writer:
        for i, case_id in enumerate(ids):
            image, label, site = make_case(i, settings)
            writer.add_case(case_id, image, label, availability=available[case_id], site=site,
                            present=[True] * len(BRATS_MODALITIES))
        for name, members in splits.items():
            writer.set_split(name, members)


def write_synthetic_nifti(folder: str | Path, settings: SynthSettings, *, layout: str = "brats2020", pad: int = 6,
                          missing: Mapping[str, Sequence[str]] | None = None) -> list[str]:
    """Write phantoms as a raw BraTS-layout NIfTI folder (int16 intensities, brain padded by ``pad`` zero voxels,
    labels 0/1/2/4 for ``brats2020`` or 0-3 for ``brats2023``) plus ``sites.csv``. ``missing`` maps case ids to
    modalities whose files are left out. Returns the case ids."""
    import nibabel as nib

    from .layouts import BUILTIN_LAYOUTS

    spec = BUILTIN_LAYOUTS[layout]
    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    prefix = "BraTS20_Training_" if layout == "brats2020" else "BraTS-GLI-"
    ids = [f"{prefix}{i + 1:03d}" for i in range(settings.cases)]
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    affine[:3, 3] = (-90.0, -126.0, -72.0)
    rows = ["case,site"]
    for i, case_id in enumerate(ids):
        raw, label, brain, site = make_raw_case(i, settings)
        rows.append(f"{case_id},{site}")
        case_dir = root / case_id
        case_dir.mkdir(exist_ok=True)
        for c, m in enumerate(spec.modalities):
            if m in (missing or {}).get(case_id, ()):
                continue
            vol = np.where(brain.numpy(), np.clip(raw[c] * 400 + 200, 1, 32000), 0)
            vol = np.pad(vol, pad).astype(np.int16)
            nib.save(nib.Nifti1Image(vol, affine), case_dir / spec.files[m][0].format(case=case_id))
        stored = np.pad(label, pad)
        if layout == "brats2020":
            stored = np.where(stored == 3, 4, stored)
        nib.save(nib.Nifti1Image(stored.astype(np.uint8), affine), case_dir / spec.label[0].format(case=case_id))
    (root / "sites.csv").write_text("\n".join(rows) + "\n")
    return ids
