"""Augmentation as a transform list (prism.data.transforms): image and label stay aligned through every spatial
transform, missing modalities stay zero through every transform, each transform computes what it says (checked
against formulas written here), the nnunet preset holds nnU-Net's values, and config mistakes are one line."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

from prism.config import build_config, config_to_yaml
from prism.data.transforms import NNUNET, TRANSFORMS, AugmentPipeline, PatchSample, Spatial, draw_factor
from prism.errors import ConfigError

SHAPE = (40, 44, 36)


def phantom(shape: tuple[int, int, int] = SHAPE) -> tuple[np.ndarray, np.ndarray]:
    """Three off-centre blobs labelled 1-3; the image is the one-hot label (4 channels, background included)."""
    z, y, x = np.indices(shape)
    label = np.zeros(shape, np.uint8)
    label[(z - 13) ** 2 + (y - 15) ** 2 + (x - 11) ** 2 < 40] = 1
    label[(z - 26) ** 2 + (y - 29) ** 2 + (x - 22) ** 2 < 50] = 2
    label[(abs(z - 20) < 4) & (abs(y - 13) < 3) & (abs(x - 25) < 6)] = 3
    image = np.eye(4, dtype=np.float32)[label].transpose(3, 0, 1, 2).copy()
    return image, label


def region_reader(image: np.ndarray, label: np.ndarray):
    """``read(start, size)`` over in-memory arrays, zero outside (what CacheReader.read_region does)."""
    def read(start, size):
        out_i = np.zeros((image.shape[0], *size), np.float32)
        out_l = np.zeros(tuple(size), np.uint8)
        src = tuple(slice(max(s, 0), min(s + n, d)) for s, n, d in zip(start, size, label.shape, strict=True))
        dst = tuple(slice(a.start - s, a.stop - s) for a, s in zip(src, start, strict=True))
        if all(a.stop > a.start for a in src):
            out_i[(slice(None), *dst)] = image[(slice(None), *src)]
            out_l[dst] = label[src]
        return out_i, out_l
    return read


def centroid(weights: torch.Tensor) -> np.ndarray:
    w = weights.double().clamp(min=0)
    grids = torch.meshgrid(*[torch.arange(n, dtype=torch.float64) for n in w.shape], indexing="ij")
    return np.array([float((g * w).sum() / w.sum()) for g in grids])


def assert_aligned(image: torch.Tensor, label: torch.Tensor) -> list[np.ndarray]:
    """Each labelled structure of ``label`` sits where its one-hot channel of ``image`` does: centroids within
    0.6 voxel (a small structure's nearest-neighbour mask is off by up to half a voxel where the trilinear one is
    not), overlap Dice > 0.85. Returns the centroid offsets (label minus image), one per structure compared."""
    offsets = []
    for k in (1, 2, 3):
        mask = label == k
        if mask.sum() < 30:  # a structure mostly moved out of the patch
            continue
        offset = centroid(mask.float()) - centroid(image[k])
        assert np.abs(offset).max() < 0.6, (k, offset)
        hard = image[k] > 0.5
        dice = 2 * (hard & mask).sum() / (hard.sum() + mask.sum())
        assert dice > 0.85, (k, float(dice))
        offsets.append(offset)
    return offsets


SPATIAL_CASES = {
    "rotation": [{"name": "spatial", "options": {"rotate_probability": 1, "scale_probability": 0}}],
    "scaling": [{"name": "spatial", "options": {"rotate_probability": 0, "scale_probability": 1}}],
    "anisotropic scaling": [{"name": "spatial", "options": {"rotate_probability": 0, "scale_probability": 1,
                                                            "scale_isotropic": False}}],
    "elastic": [{"name": "spatial", "options": {"rotate_probability": 0, "scale_probability": 0,
                                                "elastic_probability": 1, "elastic_sigma": [4, 6],
                                                "elastic_magnitude": [2, 3]}}],
    "all at once": [{"name": "spatial", "options": {"rotate_probability": 1, "scale_probability": 1,
                                                    "elastic_probability": 1, "elastic_sigma": [4, 6],
                                                    "elastic_magnitude": [1, 2]}}],
    "mirror": [{"name": "mirror", "options": {"probability": 1.0}}],
    "spatial then mirror (nnunet's)": [NNUNET[0], NNUNET[-1]],
}


@pytest.mark.parametrize("case", list(SPATIAL_CASES))
def test_image_and_label_stay_aligned_through_every_spatial_transform(case):
    image, label = phantom()
    pipe = AugmentPipeline(SPATIAL_CASES[case])
    read = region_reader(image, label)
    offsets, moved = [], False
    for seed in range(10):
        out_image, out_label = pipe.make_patch(read, (4, 6, 2), (32, 32, 32), SHAPE, [True] * 4, seed=seed)
        assert out_image.shape == (4, 32, 32, 32) and out_label.shape == (32, 32, 32)
        assert set(out_label.unique().tolist()) <= {0, 1, 2, 3}  # nearest: no label is invented
        offsets += assert_aligned(out_image, out_label)
        plain = torch.from_numpy(read((4, 6, 2), (32, 32, 32))[1]).long()
        moved |= not torch.equal(out_label, plain)
    assert len(offsets) >= 20 and moved  # the structures were compared, and the transform did move them
    assert np.abs(np.mean(offsets, axis=0)).max() < 0.1  # no systematic shift (half a voxel would show as 0.5)


def test_a_misaligned_label_fails_the_alignment_check():
    """The check above can fail: the label flipped alone along one axis is caught."""
    image, label = phantom()
    out_image, out_label = AugmentPipeline([]).make_patch(region_reader(image, label), (4, 6, 2), (32, 32, 32),
                                                          SHAPE, [True] * 4, seed=0)
    assert_aligned(out_image, out_label)
    with pytest.raises(AssertionError):
        assert_aligned(out_image, out_label.flip(2))


@pytest.mark.parametrize("start", [(4, 6, 2), (-5, 30, 20), (20, -3, -6)])
def test_a_drawn_identity_is_the_plain_crop_near_borders_too(start):
    """A rotation by 0 degrees drawn with certainty resamples the clipped box the grid reaches: its result is the
    crop itself (zero outside the volume), so the box and its offset are right."""
    image, label = phantom()
    image = image * np.random.default_rng(0).normal(1, 0.3, size=image.shape).astype(np.float32)
    read = region_reader(image, label)
    spatial = Spatial(rotate_probability=1, rotate_degrees=0, scale_probability=0)
    spatial.set_random_state(0)
    grid = spatial.draw((24, 24, 24))
    assert grid is not None
    got_image, got_label = spatial.resample_region(read, grid, start, (24, 24, 24), SHAPE, 4)
    want_image, want_label = read(start, (24, 24, 24))
    torch.testing.assert_close(got_image, torch.from_numpy(want_image), atol=1e-5, rtol=0)
    assert torch.equal(got_label, torch.from_numpy(want_label))


def test_a_scale_above_one_shows_more_of_the_volume():
    """nnU-Net's convention: the factor scales the sampling grid, so a ball of radius 8 under scale 2 has about
    1/8 of its voxels."""
    z, y, x = np.indices((48, 48, 48))
    label = ((z - 23.5) ** 2 + (y - 23.5) ** 2 + (x - 23.5) ** 2 < 64).astype(np.uint8)
    read = region_reader(label[None].astype(np.float32), label)
    pipe = AugmentPipeline([{"name": "spatial", "options": {"rotate_probability": 0, "scale_probability": 1,
                                                            "scale": [2, 2]}}])
    _, out = pipe.make_patch(read, (12, 12, 12), (24, 24, 24), (48, 48, 48), [True], seed=1)
    ratio = float(out.sum()) / float(read((12, 12, 12), (24, 24, 24))[1].sum())
    assert 0.10 < ratio < 0.15, ratio


def test_rotation_keeps_distances_to_the_patch_centre_and_volumes():
    image, label = phantom()
    read = region_reader(image, label)
    pipe = AugmentPipeline([{"name": "spatial", "options": {"rotate_probability": 1, "rotate_degrees": 25,
                                                            "scale_probability": 0}}])
    before = torch.from_numpy(read((4, 6, 2), (32, 32, 32))[1])
    centre = np.full(3, 15.5)
    for seed in range(4):
        _, after = pipe.make_patch(read, (4, 6, 2), (32, 32, 32), SHAPE, [True] * 4, seed=seed)
        k = 3  # the box near the middle stays inside the patch under 25 degrees
        d0 = np.linalg.norm(centroid((before == k).float()) - centre)
        d1 = np.linalg.norm(centroid((after == k).float()) - centre)
        assert abs(d0 - d1) < 0.5
        assert abs(int((after == k).sum()) - int((before == k).sum())) < 0.12 * int((before == k).sum())


def firing(name: str) -> dict:
    """Options that make transform ``name`` act on every sample and every channel."""
    options = {"spatial": {"rotate_probability": 1, "scale_probability": 1, "elastic_probability": 1,
                           "elastic_sigma": [3, 4], "elastic_magnitude": [1, 2]},
               "mirror": {"probability": 1.0}}.get(name, {"probability": 1.0})
    if "channel_probability" in TRANSFORMS[name].__init__.__code__.co_varnames:
        options = {**options, "channel_probability": 1.0}
    return options


@pytest.mark.parametrize("name", list(TRANSFORMS))
def test_a_missing_modality_stays_zero_through_every_transform(name):
    """Channel 1 is missing (zero, unavailable): each transform, made to fire, leaves it zero on its own (before
    the pipeline's final zeroing) and changes the available channels."""
    rng = np.random.default_rng(3)
    image = rng.normal(0, 1, size=(4, *SHAPE)).astype(np.float32) + 2
    image[1] = 0
    _, label = phantom()
    available = torch.tensor([True, False, True, True])
    transform = TRANSFORMS[name](**AugmentPipeline([{"name": name, "options": firing(name)}]).steps[0]["options"])
    transform.set_random_state(7)
    start, size = (4, 6, 2), (32, 32, 32)
    before = torch.from_numpy(region_reader(image, label)(start, size)[0])
    if isinstance(transform, Spatial):
        out, _ = transform.resample_region(region_reader(image, label), transform.draw(size), start, size, SHAPE, 4)
    else:
        sample = PatchSample(before.clone(), torch.from_numpy(label[4:36, 6:38, 2:34]).clone(), available)
        out = transform(sample).image
    assert torch.count_nonzero(out[1]) == 0
    assert not torch.equal(out[available], before[available])


def sample_of(x: np.ndarray, available=(True, False, True)) -> PatchSample:
    return PatchSample(torch.from_numpy(x.copy()), torch.zeros(x.shape[1:], dtype=torch.int64),
                       torch.tensor(available))


def fired(name: str, x: np.ndarray, seed: int = 0, available=(True, False, True), **options) -> torch.Tensor:
    t = TRANSFORMS[name](**{"probability": 1.0, **options})
    t.set_random_state(seed)
    return t(sample_of(x, available)).image


@pytest.fixture
def channels() -> np.ndarray:
    x = np.random.default_rng(11).gamma(2.0, 1.0, size=(3, 12, 14, 10)).astype(np.float32) - 1.5
    x[1] = 0
    return x


def test_brightness_and_shift_are_the_formulas(channels):
    got = fired("brightness", channels, factor=(1.3, 1.3))
    np.testing.assert_allclose(got[[0, 2]].numpy(), channels[[0, 2]] * 1.3, rtol=1e-6)
    got = fired("shift_intensity", channels, offset=(0.25, 0.25))
    np.testing.assert_allclose(got[[0, 2]].numpy(), channels[[0, 2]] + 0.25, rtol=1e-6)


def test_contrast_scales_about_the_mean_within_the_former_range(channels):
    got = fired("contrast", channels, factor=(2.0, 2.0))
    for c in (0, 2):
        x = channels[c].astype(np.float64)
        want = np.clip((x - x.mean()) * 2 + x.mean(), x.min(), x.max())
        np.testing.assert_allclose(got[c].numpy(), want, atol=1e-5)


@pytest.mark.parametrize("invert", [False, True])
@pytest.mark.parametrize("retain", [False, True])
def test_gamma_is_nnunets_formula(channels, invert, retain):
    got = fired("gamma", channels, gamma=(1.8, 1.8), invert=invert, retain_stats=retain)
    for c in (0, 2):
        x = -channels[c].astype(np.float64) if invert else channels[c].astype(np.float64)
        lo, span = x.min(), x.max() - x.min()
        y = ((x - lo) / span) ** 1.8 * span + lo
        if retain:
            y = (y - y.mean()) / y.std(ddof=1) * x.std(ddof=1) + x.mean()
        np.testing.assert_allclose(got[c].numpy(), -y if invert else y, atol=2e-5)


def test_noise_adds_one_field_to_every_available_modality(channels):
    got = fired("gaussian_noise", channels, std=0.2)
    field = got[0] - torch.from_numpy(channels[0])
    torch.testing.assert_close(got[2] - torch.from_numpy(channels[2]), field, atol=1e-6, rtol=0)
    assert 0 < float(field.std()) < 0.2


def test_blur_of_an_impulse_is_a_normalised_gaussian_of_the_drawn_width():
    x = np.zeros((1, 33, 33, 33), np.float32)
    x[0, 16, 16, 16] = 1
    got = fired("gaussian_blur", x, available=(True,), sigma=(1.5, 1.5), channel_probability=1.0)[0].double()
    assert abs(float(got.sum()) - 1) < 1e-5
    offsets = torch.arange(33, dtype=torch.float64) - 16
    for axis in range(3):
        marginal = got.sum(dim=[a for a in range(3) if a != axis])
        assert abs(float((marginal * offsets**2).sum()) - 1.5**2) < 0.01


def test_low_resolution_keeps_the_shape_and_constants_and_loses_detail():
    x = np.full((2, 16, 16, 16), 3.0, np.float32)
    x[1] = np.indices((16, 16, 16)).sum(0) % 2  # a checkerboard: all detail
    got = fired("low_resolution", x, available=(True, True), zoom=(0.5, 0.5), channel_probability=1.0)
    assert got.shape == x.shape
    torch.testing.assert_close(got[0], torch.full((16, 16, 16), 3.0))
    assert float(got[1].std()) < 0.5 * float(np.std(x[1]))


def test_mirror_flips_image_and_label_along_the_drawn_axes():
    x = np.random.default_rng(0).normal(size=(2, 5, 6, 7)).astype(np.float32)
    t = TRANSFORMS["mirror"](axes=(0, 2), probability=1.0)
    t.set_random_state(0)
    label = torch.arange(5 * 6 * 7).reshape(5, 6, 7)
    out = t(PatchSample(torch.from_numpy(x.copy()), label.clone(), torch.tensor([True, True])))
    assert torch.equal(out.image, torch.from_numpy(np.flip(x, (1, 3)).copy()))
    assert torch.equal(out.label, label.flip(0, 2))


def test_factors_around_one_are_below_and_above_one_equally_often():
    """nnU-Net's BGContrast: for (0.7, 1.5), half the draws fall in [0.7, 1), half in [1, 1.5]."""
    R = np.random.RandomState(0)
    draws = np.array([draw_factor(R, 0.7, 1.5) for _ in range(4000)])
    assert draws.min() >= 0.7 and draws.max() <= 1.5
    assert 0.47 < (draws < 1).mean() < 0.53
    above = np.array([draw_factor(R, 1.2, 2.0) for _ in range(2000)])  # a range without 1: uniform
    assert above.min() >= 1.2 and 0.45 < (above < 1.6).mean() < 0.55


NNUNET_DEFAULTS = [  # nnunetv2/training/nnUNetTrainer/nnUNetTrainer.py, get_training_transforms (3D)
    ("spatial", {"rotate_probability": 0.2, "rotate_degrees": 30.0, "scale_probability": 0.2, "scale": (0.7, 1.4),
                 "scale_isotropic": True, "elastic_probability": 0.0}),
    ("gaussian_noise", {"probability": 0.1, "std": 0.1}),
    ("gaussian_blur", {"probability": 0.2, "channel_probability": 0.5, "sigma": (0.5, 1.0)}),
    ("brightness", {"probability": 0.15, "channel_probability": 1.0, "factor": (0.75, 1.25)}),
    ("contrast", {"probability": 0.15, "channel_probability": 1.0, "factor": (0.75, 1.25), "preserve_range": True}),
    ("low_resolution", {"probability": 0.25, "channel_probability": 0.5, "zoom": (0.5, 1.0)}),
    ("gamma", {"probability": 0.1, "channel_probability": 1.0, "gamma": (0.7, 1.5), "invert": True,
               "retain_stats": True}),
    ("gamma", {"probability": 0.3, "channel_probability": 1.0, "gamma": (0.7, 1.5), "invert": False,
               "retain_stats": True}),
    ("mirror", {"axes": (0, 1, 2), "probability": 0.5}),
]


def test_the_nnunet_preset_holds_nnunets_transforms_probabilities_and_ranges_in_its_order():
    steps = build_config(None, ["data.augment=nnunet"]).data.augment
    assert [s.name for s in steps] == [name for name, _ in NNUNET_DEFAULTS]
    for step, (name, values) in zip(steps, NNUNET_DEFAULTS, strict=True):
        for key, value in values.items():
            assert step.options[key] == value, (name, key)


def test_light_is_the_default_and_nnunet_is_written_out_in_the_runs_config():
    assert build_config(None, []).data.augment == "light"
    config = build_config(None, ["data.augment=nnunet"])
    text = config_to_yaml(config)
    assert "nnunet" not in text and "low_resolution" in text  # the list itself, every option spelled out
    assert build_config(yaml.safe_load(text)) == config  # and it reads back as the same config


def test_changing_one_transform_leaves_the_others_draws_alone():
    image, label = phantom()
    read = region_reader(image, label)
    base = [dict(NNUNET[0], options={"rotate_probability": 1}), {"name": "gaussian_noise", "options": {}}]
    changed = [base[0], {"name": "gaussian_noise", "options": {"probability": 1.0, "std": 0.5}}]
    a = AugmentPipeline(base).make_patch(read, (4, 6, 2), (24, 24, 24), SHAPE, [True] * 4, seed=5)[1]
    b = AugmentPipeline(changed).make_patch(read, (4, 6, 2), (24, 24, 24), SHAPE, [True] * 4, seed=5)[1]
    assert torch.equal(a, b)  # the label (spatial's draw) is the same


@pytest.mark.parametrize(("overrides", "line"), [
    (["data.augment=nnunt"], "config: data.augment: unknown preset 'nnunt'; did you mean 'nnunet'?"),
    (["data.augment=[{name: gama}]"], "config: data.augment.0.name: unknown transform 'gama'; did you mean "
                                      "'gamma'?"),
    (["data.augment=[{name: mirror}, {name: gamma, options: {gama: [1, 2]}}]"],
     "config: data.augment.1.options.gama: unknown option of transform 'gamma'; did you mean 'gamma'?"),
    (["data.augment=[{name: gamma, options: {gamma: [2, 1]}}]"],
     "config: data.augment.0.options.gamma: transform 'gamma': a range (low, high) needs low <= high"),
    (["data.augment=[{name: gamma, optons: {}}]"], "config: data.augment.0.optons: unknown field; did you mean "
                                                   "'options'?"),
    (["data.augment=[{name: mirror}, {name: spatial}]"], "config: data.augment.1: 'spatial' must come first"),
    (["data.augment=nnunet", "data.rotate_degrees=10"], "config: data.rotate_degrees: configures data.augment: "
                                                        "light only"),
    (["data.augment=[]", "data.flip=false"], "config: data.flip: configures data.augment: light only"),
    (["data.augment=[{name: mirror, options: {probability: 1.5}}]"],
     "config: data.augment.0.options.probability: transform 'mirror': Input should be less than or equal to 1"),
    (["data.augment=7"], "config: data.augment: a preset name (light, nnunet) or a list of transforms"),
])
def test_augmentation_mistakes_are_one_line_naming_the_field(overrides, line):
    with pytest.raises(ConfigError) as err:
        build_config(None, overrides)
    message = str(err.value)
    assert "\n" not in message and message.startswith(line), message


def test_prism_train_refuses_a_bad_transform_in_one_line_before_writing(tmp_path, tiny_cache, monkeypatch, capsys):
    from prism.cli.train import main

    monkeypatch.chdir(tmp_path)
    code = main(["--data", str(tiny_cache), "-o", str(tmp_path / "out"), "--no-eval",
                 "data.augment=[{name: spatial, options: {rotate_degree: 10}}]"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "data.augment.0.options.rotate_degree: unknown option of transform 'spatial'; did you mean " \
           "'rotate_degrees'" in err[0]
    assert list(tmp_path.iterdir()) == []
