"""BraTS-like synthetic phantoms, seeded and reproducible.

Each case is a brain-shaped ellipsoid with two tissue classes and ventricles (CSF), and a tumour made of nested
irregular regions: necrotic core (label 1) inside an enhancing rim (label 3) inside edema (label 2), so that
WT = {1, 2, 3} contains TC = {1, 3} contains ET = {3} as in BraTS. The four contrasts carry different
information, as in real MRI:

* FLAIR: edema and the whole tumour bright, CSF dark -> the best single modality for WT;
* T1ce: the (patchy) enhancing rim very bright, necrosis dark, edema invisible -> the only one that shows ET;
* T1: tumour slightly dark, little contrast;
* T2: edema and the core bright, but so is CSF -> WT with some confusion.

Outside T1ce, enhancing tumour and necrosis look the same, and the enhancement is patchy, so ET cannot be
inferred from the shape of the core alone.

Smooth multiplicative bias fields and Gaussian noise are added per modality; volumes are z-scored over brain
voxels as preprocessing would do. With ``sites > 1`` case ``i`` comes from site ``i % sites``; every site but
site 0 has its own intensity profile (a per-modality contrast curve), noise level and bias strength, so a model
can be tested on a site it has not seen. Phantoms go straight to a cache (``write_synthetic_cache``) or to a
BraTS-layout NIfTI folder (``write_synthetic_nifti``) that ``prism-data preprocess`` reads like real data.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from prism.modalities import BRATS_MODALITIES

# label -> intensity per modality; None keeps the tissue background (the lesion is invisible there)
_TISSUE = {  # (grey matter, white matter, CSF)
    "flair": (0.55, 0.45, 0.10),
    "t1ce": (0.45, 0.60, 0.15),
    "t1": (0.45, 0.65, 0.15),
    "t2": (0.60, 0.45, 1.10),
}
_LESION = {  # (necrosis=1, edema=2, enhancing=3): absolute values, or offsets (negative) added to the tissue
    # only T1ce tells enhancing tumour from the rest of the core: elsewhere labels 1 and 3 look the same
    "flair": {1: 0.80, 2: 1.00, 3: 0.80},
    "t1ce": {1: 0.15, 2: None, 3: 1.30},
    "t1": {1: 0.35, 2: -0.06, 3: 0.35},
    "t2": {1: 1.10, 2: 0.95, 3: 1.10},
}


@dataclass(frozen=True)
class SynthSettings:
    """What a synthetic dataset is made of."""

    cases: int = 24
    shape: tuple[int, int, int] = (48, 48, 48)
    seed: int = 0
    noise: float = 0.06
    bias: float = 0.25
    sites: int = 1


def _smooth_field(gen: torch.Generator, shape: Sequence[int], coarse: int = 4) -> torch.Tensor:
    """A smooth random field in [-1, 1] (trilinear upsampling of a coarse random grid)."""
    grid = torch.rand((1, 1, coarse, coarse, coarse), generator=gen) * 2 - 1
    return F.interpolate(grid, size=tuple(shape), mode="trilinear", align_corners=True)[0, 0]


def _blur(x: torch.Tensor) -> torch.Tensor:
    """A light 3x3x3 box blur (partial-volume effect)."""
    return F.avg_pool3d(x[None, None], 3, stride=1, padding=1, count_include_pad=False)[0, 0]


@dataclass(frozen=True)
class SiteProfile:
    """How one acquisition site differs: contrast exponent per modality, noise and bias multipliers."""

    gamma: tuple[float, ...]
    noise: float
    bias: float


def site_profile(site: int, modalities: Sequence[str] = BRATS_MODALITIES) -> SiteProfile:
    """Site 0 is the reference (identity); other sites draw a fixed profile from their number."""
    if site == 0:
        return SiteProfile(gamma=(1.0,) * len(modalities), noise=1.0, bias=1.0)
    rng = np.random.default_rng(10_007 * site)
    return SiteProfile(gamma=tuple(float(g) for g in rng.uniform(0.6, 1.6, len(modalities))),
                       noise=float(rng.uniform(1.3, 2.5)), bias=float(rng.uniform(0.4, 1.8)))


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

    # brain and tissue
    radii = (u(0.78, 0.9), u(0.8, 0.92), u(0.72, 0.86))
    brain = (z / radii[0]) ** 2 + (y / radii[1]) ** 2 + (x / radii[2]) ** 2 < 1.0
    white = _smooth_field(gen, shape, coarse=6) > 0.0
    ventricles = ((z / 0.22) ** 2 + ((y - 0.05) / 0.12) ** 2 + ((x - 0.12) / 0.1) ** 2 < 1) | (
        (z / 0.22) ** 2 + ((y - 0.05) / 0.12) ** 2 + ((x + 0.12) / 0.1) ** 2 < 1
    )
    ventricles &= brain

    # tumour: irregular nested regions around a random centre
    centre = [u(-0.35, 0.35) for _ in range(3)]
    dist = torch.sqrt((z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2)
    dist = dist * (1 + 0.25 * _smooth_field(gen, shape, coarse=5))
    r_wt = u(0.32, 0.46)
    r_tc = r_wt * u(0.55, 0.75)
    r_nec = r_tc * u(0.45, 0.65)
    label = torch.zeros(shape, dtype=torch.uint8)
    enhancing = _smooth_field(gen, shape, coarse=6) > -0.35  # patchy enhancement: not a fixed-width rim
    label[dist < r_wt] = 2
    label[(dist < r_tc) & enhancing] = 3
    label[(dist < r_tc) & ~enhancing] = 1
    label[dist < r_nec] = 1
    label[~brain] = 0
    ventricles &= label == 0

    site = index % max(settings.sites, 1)
    site_gain = 1.0 + 0.15 * site
    profile = site_profile(site, modalities)
    images = []
    for m, gamma in zip(modalities, profile.gamma, strict=True):
        gm, wm, csf = _TISSUE.get(m, (0.5, 0.5, 0.5))
        img = torch.where(white, torch.tensor(wm), torch.tensor(gm)).float()
        img[ventricles] = csf
        for lab, value in _LESION.get(m, {}).items():
            if value is None:
                continue
            region = label == lab
            img[region] = img[region] + value if value < 0 else torch.tensor(value)
        img = _blur(img)
        if gamma != 1.0:
            img = img.clamp_min(0) ** gamma
        img = img * torch.exp(settings.bias * profile.bias * _smooth_field(gen, shape, coarse=3)) * site_gain
        img = img + settings.noise * profile.noise * torch.randn(shape, generator=gen)
        img[~brain] = 0.0
        images.append(img)
    image = torch.stack(images).numpy().astype(np.float32)
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
    preprocessing = {"generator": "prism.data_tools.synthetic", **settings.__dict__,
                     "hold_out_sites": sorted(hold_out_sites), "missing_rates": missing_rates or ""}
    with CacheWriter(path, modalities=BRATS_MODALITIES, labels=BRATS_LABELS, preprocessing=preprocessing,
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
