"""The cache's default compression (LZ4HC clevel 8 + shuffle, compressed foreground points): caches written with it
and with the earlier default (LZ4 clevel 5) read the same values through every read path; the new one is smaller."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from prism.data.cache_format import BRATS_LABELS
from prism.data.cache_reader import CacheReader
from prism.data.cache_writer import CacheWriter, foreground_points
from prism.data_tools.synthetic import SynthSettings, make_case
from prism.modalities import BRATS_MODALITIES

BLOSC_LZ4, BLOSC_LZ4HC = 1, 2  # Blosc compressor codes (blosc.h)


@pytest.fixture(scope="module")
def caches(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("layout")
    img, lab, _ = make_case(0, SynthSettings(shape=(40, 48, 40), seed=5))
    paths = {}
    for name, options in (("default", {}), ("earlier", {"codec": "lz4", "clevel": 5})):
        paths[name] = tmp / f"{name}.h5"
        with CacheWriter(paths[name], modalities=BRATS_MODALITIES, labels=BRATS_LABELS, chunk=16, **options) as w:
            w.add_case("c0", img, lab, availability=[True] * 4)
            w.set_split("train", ["c0"])
    return paths, img, lab


def _blosc_codec(path, name: str) -> tuple[int, int]:
    """(compressor code, clevel) from the Blosc2 filter's parameters (hdf5plugin: cd_values[4:7])."""
    with h5py.File(path) as f:
        plist = f[f"cases/c0/{name}"].id.get_create_plist()
        cd = plist.get_filter(0)[2]
    return int(cd[6]), int(cd[4])


def test_default_is_lz4hc_level_8_and_the_earlier_default_lz4(caches):
    paths, _, _ = caches
    assert _blosc_codec(paths["default"], "image") == (BLOSC_LZ4HC, 8)
    assert _blosc_codec(paths["default"], "label") == (BLOSC_LZ4HC, 8)
    assert _blosc_codec(paths["earlier"], "image") == (BLOSC_LZ4, 5)


@pytest.mark.parametrize("which", ["default", "earlier"])
@pytest.mark.parametrize("options", [{"threads": 1}, {"threads": 2}, {"checksums": True}])
def test_every_read_path_returns_the_written_values(caches, which, options):
    paths, img, lab = caches
    reader = CacheReader(paths[which], **options)
    try:
        rng = np.random.default_rng(0)
        for _ in range(4):  # patches cutting chunks, and one at the far corner
            start = tuple(int(rng.integers(0, s - 20 + 1)) for s in lab.shape)
            x, y = reader.read_patch("c0", start, (20, 20, 20))
            sl = tuple(slice(a, a + 20) for a in start)
            np.testing.assert_array_equal(x, img[(slice(None), *sl)])
            np.testing.assert_array_equal(y, lab[sl])
        full_x, full_y = reader.read_case("c0")
        np.testing.assert_array_equal(full_x, img)
        np.testing.assert_array_equal(full_y, lab)
        expected = foreground_points(lab, 4096, np.random.default_rng(0))
        assert reader.foreground("c0").shape == expected.shape
        np.testing.assert_array_equal(np.sort(reader.foreground("c0"), axis=0), np.sort(expected, axis=0))
    finally:
        reader.close()


def test_default_cache_is_smaller_than_the_earlier_default(caches):
    paths, _, _ = caches
    assert paths["default"].stat().st_size < 0.97 * paths["earlier"].stat().st_size
