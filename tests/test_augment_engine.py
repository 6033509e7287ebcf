"""Augmentation through the engine: ``light`` (the default) makes the patches prism always made, draw for draw;
a transform list gives the same patches for the same seed whatever the DataLoader workers and the global
generators, keeps missing modalities zero, and a run with the nnunet list resumes bitwise."""

from __future__ import annotations

import csv
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import KillAt, Killed, fast_config
from prism.data.augment import intensity_jitter, random_rotation, rotate_region, rotation_margin
from prism.data.cache_reader import CacheReader
from prism.data.patches import PatchDataset
from prism.data.transforms import AugmentPipeline
from prism.data_tools.synthetic import SynthSettings, write_synthetic_cache
from prism.engine.distributed import DistInfo
from prism.engine.run import augmentation, build_streams
from prism.engine.trainer import Trainer


def light_reference(reader: CacheReader, cases: list[str], size: tuple[int, int, int], seed: int, index: int, *,
                    foreground_fraction: float, flip: bool, rotate_degrees: float, rotate_probability: float,
                    intensity_scale: float, intensity_shift: float) -> tuple[np.ndarray, np.ndarray]:
    """Sample ``index`` of the light pipeline as documented: one generator seeded by ``(seed, index)`` draws, in
    order, the case, whether to centre on foreground (and which voxel, else a uniform start), a flip per axis,
    whether to rotate (and the rotation), then the intensity factors; the rotation is applied first (read with
    its margin), then the flips, then the intensity change."""
    rng = np.random.default_rng((seed, index))
    case = cases[int(rng.integers(len(cases)))]
    shape = reader.info(case).shape
    centre = None
    if rng.random() < foreground_fraction:
        voxels = reader.foreground(case)
        if len(voxels):
            centre = voxels[rng.integers(len(voxels))]
    if centre is None:
        start = [int(rng.integers(0, max(s - p, 0) + 1)) for s, p in zip(shape, size, strict=True)]
    else:
        start = [int(np.clip(c - p // 2, 0, max(s - p, 0))) for c, s, p in zip(centre, shape, size, strict=True)]
    axes = [a for a in range(3) if rng.random() < 0.5] if flip else []
    rotation = None
    if rotate_degrees > 0 and rng.random() < rotate_probability:
        rotation = random_rotation(rng, rotate_degrees)
    if rotation is None:
        image, label = reader.read_region(case, tuple(start), size)
    else:
        margin = rotation_margin(rotation, size)
        image, label = reader.read_region(case, tuple(s - m for s, m in zip(start, margin, strict=True)),
                                          tuple(p + 2 * m for p, m in zip(size, margin, strict=True)))
        image, label = rotate_region(image, label, rotation, size)
    if axes:
        image, label = np.flip(image, [a + 1 for a in axes]), np.flip(label, axes)
    if intensity_scale > 0 or intensity_shift > 0:
        image = intensity_jitter(image, rng, intensity_scale, intensity_shift)
    return np.ascontiguousarray(image, np.float32), np.ascontiguousarray(label).astype(np.int64)


def streams_for(config, cache: Path):
    reader = CacheReader(cache)
    return build_streams(config, reader, reader.split("train"), torch.device("cpu"), DistInfo()), reader


@pytest.mark.parametrize("overrides", [
    [],
    ["data.flip=false"],
    ["data.rotate_degrees=15", "data.rotate_probability=0.5", "data.intensity_scale=0.2", "data.intensity_shift=0.1"],
])
def test_light_through_the_engine_makes_the_documented_patches_bitwise(tiny_cache, overrides):
    config = fast_config("data.batch_size=3", "train.seed=11", *overrides, cache=tiny_cache)
    assert config.data.augment == "light"
    streams, reader = streams_for(config, tiny_cache)
    d = config.data
    for step in range(4):
        batch = streams.next("train")
        for j in range(3):
            image, label = light_reference(
                reader, list(reader.split("train")), tuple(d.patch_size), 11, step * 3 + j,
                foreground_fraction=d.foreground_fraction, flip=d.flip, rotate_degrees=d.rotate_degrees,
                rotate_probability=d.rotate_probability, intensity_scale=d.intensity_scale,
                intensity_shift=d.intensity_shift)
            assert torch.equal(batch.image[j], torch.from_numpy(image)), (step, j)
            assert torch.equal(batch.label[j], torch.from_numpy(label)), (step, j)
    streams.close()
    reader.close()


def test_a_transform_list_is_built_into_the_streams_and_flips_only_through_mirror(tiny_cache):
    config = fast_config("data.augment=nnunet", cache=tiny_cache)
    pipeline = augmentation(config)
    assert isinstance(pipeline, AugmentPipeline)
    assert [s["name"] for s in pipeline.steps][0] == "spatial"
    streams, reader = streams_for(config, tiny_cache)
    assert streams.flip is False and isinstance(streams.augment, AugmentPipeline)
    with pytest.raises(ValueError, match="a transform list flips with 'mirror'"):
        PatchDataset(reader, reader.split("train"), (8, 8, 8), augment=pipeline, flip=True)
    reader.close()


def _disturb_global_generators() -> None:
    torch.manual_seed(4321)
    np.random.seed(1234)
    random.seed(77)


def _batches(config, cache: Path, n: int) -> list:
    streams, reader = streams_for(config, cache)
    out = [streams.next("train") for _ in range(n)]
    streams.close()
    reader.close()
    return out


HIGH = ("data.augment=[{name: spatial, options: {rotate_probability: 0.8, scale_probability: 0.8}}, "
        "{name: gaussian_noise, options: {probability: 0.5}}, {name: gamma, options: {probability: 0.5}}, "
        "{name: gaussian_blur, options: {probability: 0.5}}, {name: mirror}]")


@pytest.mark.parametrize("augment", ["data.augment=nnunet", HIGH])
def test_the_same_seed_gives_the_same_patches_whatever_the_global_generators(tiny_cache, augment):
    config = fast_config(augment, "data.batch_size=3", "data.patch_size=[20,20,20]", cache=tiny_cache)
    first = _batches(config, tiny_cache, 4)
    _disturb_global_generators()
    again = _batches(config, tiny_cache, 4)
    for a, b in zip(first, again, strict=True):
        assert a.case_ids == b.case_ids and torch.equal(a.image, b.image) and torch.equal(a.label, b.label)
    other = _batches(fast_config(augment, "data.batch_size=3", "data.patch_size=[20,20,20]", "train.seed=1",
                                 cache=tiny_cache), tiny_cache, 4)
    assert not all(torch.equal(a.image, b.image) for a, b in zip(first, other, strict=True))
    plain = _batches(fast_config("data.batch_size=3", "data.patch_size=[20,20,20]", "data.flip=false",
                                 cache=tiny_cache), tiny_cache, 4)
    assert not all(torch.equal(a.image, b.image) for a, b in zip(first, plain, strict=True))  # it augments


@pytest.mark.slow
def test_dataloader_workers_make_the_same_patches_as_the_main_process(tiny_cache):
    config = fast_config(HIGH, "data.batch_size=3", "data.patch_size=[20,20,20]", cache=tiny_cache)
    inline = _batches(config, tiny_cache, 4)
    workers = _batches(config.model_copy(update={"data": config.data.model_copy(update={"num_workers": 2})}),
                       tiny_cache, 4)
    for a, b in zip(inline, workers, strict=True):
        assert torch.equal(a.image, b.image) and torch.equal(a.label, b.label)


@pytest.fixture(scope="module")
def missing_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("missing") / "missing.h5"
    write_synthetic_cache(str(path), SynthSettings(cases=8, shape=(24, 24, 24), seed=5), missing_rates="mr2468")
    return path


def test_missing_modalities_are_zero_in_every_augmented_patch(missing_cache):
    reader = CacheReader(missing_cache)
    cases = reader.split("train")
    lacking = [c for c in cases if not all(reader.info(c).availability)]
    assert lacking  # the cache has cases without some modality
    steps = [{"name": "spatial", "options": {"rotate_probability": 1, "scale_probability": 1}},
             *[{"name": n, "options": {"probability": 1.0}} for n in
               ("gaussian_noise", "gaussian_blur", "brightness", "shift_intensity", "contrast", "low_resolution",
                "gamma")],
             {"name": "mirror", "options": {}}]
    dataset = PatchDataset(reader, lacking, (16, 16, 16), augment=AugmentPipeline(steps), seed=2)
    for i in range(8):
        sample = dataset[i]
        missing = ~sample["availability"]
        assert missing.any() and torch.count_nonzero(sample["image"][missing]) == 0
        assert torch.count_nonzero(sample["image"][~missing]) > 0
    reader.close()


@pytest.mark.slow
def test_a_run_with_the_nnunet_list_resumes_bitwise(tiny_cache, tmp_path):
    config = fast_config("data.augment=nnunet", "train.steps=8", "train.checkpoint_every=2", "train.log_every=2",
                         "train.loggers=[csv]", "data.patch_size=[20,20,20]", cache=tiny_cache)
    straight = Trainer(config, tmp_path / "straight", cache_path=tiny_cache)
    straight.fit()
    straight.close()
    killed = Trainer(config, tmp_path / "killed", cache_path=tiny_cache, observers=[KillAt(5)])
    with pytest.raises(Killed):
        killed.fit()
    killed.close()
    _disturb_global_generators()
    resumed = Trainer(config, tmp_path / "killed", cache_path=tiny_cache, resume=True)
    assert resumed.ctx.step == 4
    resumed.fit()
    resumed.close()
    assert isinstance(straight.ctx.streams.augment, AugmentPipeline)
    want = straight.ctx.model.state_dict()
    for key, value in resumed.ctx.model.state_dict().items():
        torch.testing.assert_close(value, want[key], rtol=0, atol=0, msg=key)
    assert _log(tmp_path / "killed") == _log(tmp_path / "straight")


def _log(run: Path) -> list[dict[str, str]]:
    with open(run / "train_log.csv", newline="") as fh:
        return [{k: v for k, v in row.items() if k != "samples_per_s"} for row in csv.DictReader(fh)]
