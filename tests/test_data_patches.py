"""Patch augmentation: rotation geometry checked against np.rot90, intensity jitter, zero-filled regions."""

from __future__ import annotations

import numpy as np

from prism.data.augment import Augmentation, intensity_jitter, rotate_region, rotation_margin
from prism.data.cache_format import BRATS_LABELS
from prism.data.cache_reader import CacheReader
from prism.data.cache_writer import CacheWriter
from prism.data.patches import PatchDataset


def test_quarter_turn_matches_rot90():
    rng = np.random.default_rng(0)
    rot = np.array([[1.0, 0, 0], [0, 0, -1], [0, 1, 0]])  # 90 degrees in the (h, w) plane
    size = (6, 6, 6)
    margin = rotation_margin(rot, size)
    region = tuple(s + 2 * m for s, m in zip(size, margin, strict=True))
    image = rng.standard_normal((2, *region)).astype(np.float32)
    label = rng.integers(0, 4, region).astype(np.uint8)
    img, lab = rotate_region(image, label, rot, size)
    centre = tuple(slice(m, m + s) for m, s in zip(margin, size, strict=True))
    options = [np.rot90(label[centre], k, axes=(1, 2)) for k in (1, -1)]
    matches = [np.array_equal(lab, o) for o in options]
    assert sum(matches) == 1
    k = 1 if matches[0] else -1
    np.testing.assert_allclose(img, np.rot90(image[(slice(None), *centre)], k, axes=(2, 3)), atol=1e-5)
    ident_img, ident_lab = rotate_region(image, label, np.eye(3), size)
    np.testing.assert_array_equal(ident_lab, label[centre])


def test_intensity_jitter_is_per_channel_affine():
    rng = np.random.default_rng(1)
    x = np.ones((3, 2, 2, 2), np.float32)
    y = intensity_jitter(x, rng, 0.1, 0.2)
    for c in range(3):
        assert np.unique(y[c]).size == 1 and 0.7 <= y[c, 0, 0, 0] <= 1.3
    assert np.unique(y[:, 0, 0, 0]).size == 3


def test_rotated_patches_keep_labels_and_are_reproducible(tmp_path):
    path = tmp_path / "c.h5"
    shape = (20, 20, 20)
    label = np.zeros(shape, np.uint8)
    label[8:12, 8:12, 8:12] = 2
    image = np.stack([label.astype(np.float32)] * 4)
    with CacheWriter(path, modalities=("flair", "t1ce", "t1", "t2"), labels=BRATS_LABELS, chunk=8) as w:
        w.add_case("c0", image, label, availability=[True] * 4)
    aug = Augmentation(rotate_degrees=15, rotate_probability=1.0)
    ds = PatchDataset(CacheReader(path), ["c0"], (12, 12, 12), foreground_fraction=1.0, augment=aug)
    for i in range(4):
        s = ds[i]
        assert s["image"].shape == (4, 12, 12, 12)
        assert 30 <= int((s["label"] == 2).sum()) <= 110  # a 4^3 = 64 cube, resampled
        assert set(np.unique(s["label"].numpy())) <= {0, 2}
        assert (s["image"] == ds[i]["image"]).all()


def test_snapped_patch_starts_are_chunk_multiples(tmp_path):
    path = tmp_path / "c.h5"
    rng = np.random.default_rng(0)
    with CacheWriter(path, modalities=("flair", "t1ce", "t1", "t2"), labels=BRATS_LABELS, chunk=4) as w:
        w.add_case("c0", rng.standard_normal((4, 21, 18, 30)).astype(np.float32),
                   rng.integers(0, 4, (21, 18, 30)).astype(np.uint8), availability=[True] * 4)
        w.set_split("train", ["c0"])
    reader = CacheReader(path)
    free = PatchDataset(reader, ["c0"], (8, 8, 8), snap=0)
    snapped = PatchDataset(reader, ["c0"], (8, 8, 8), snap=4)
    starts = [snapped._start(np.random.default_rng(i), "c0", (21, 18, 30)) for i in range(200)]
    assert all(s % 4 == 0 and 0 <= s <= n - 8 for st in starts for s, n in zip(st, (21, 18, 30), strict=True))
    unsnapped = [free._start(np.random.default_rng(i), "c0", (21, 18, 30)) for i in range(200)]
    assert any(s % 4 for st in unsnapped for s in st)  # without snapping, positions are free
    assert [[s - s % 4 for s in st] for st in unsnapped] == starts  # the same draws, rounded down


def test_rank_samplers_split_each_global_batch_like_one_process():
    from itertools import islice

    from prism.data.patches import RankSampler

    one = list(islice(iter(RankSampler(3, 4)), 8))  # global batches 3 and 4
    assert one == list(range(12, 20))
    ranks = [list(islice(iter(RankSampler(3, 4, rank=r, world=2)), 4)) for r in range(2)]
    assert ranks == [[12, 13, 16, 17], [14, 15, 18, 19]]
