"""The cache's default layout and compression (all modalities in one chunk of 16 x 16 voxels by whole rows of the
last axis, one Blosc2 block per chunk, LZ4HC clevel 9 + shuffle, compressed foreground points): caches written
with it, with cubic chunks (the earlier default), with one modality per chunk, and as the earlier writers wrote
them (LZ4 clevel 5 or LZ4HC 8, one modality per chunk, Blosc2's own block size) read the same values through every
read path; the default is the smallest of them, and only ZSTD (the smaller, slower choice) is smaller still."""

from __future__ import annotations

import h5py
import hdf5plugin
import numpy as np
import pytest

from prism.data import cache_writer
from prism.data.cache_format import BRATS_LABELS
from prism.data.cache_reader import CacheReader
from prism.data.cache_writer import SHUFFLES, CacheWriter, foreground_points
from prism.data.direct_chunks import _DATA, _SPECIAL, _ZERO
from prism.data_tools.synthetic import SynthSettings, make_case
from prism.modalities import BRATS_MODALITIES

BLOSC_LZ4, BLOSC_LZ4HC, BLOSC_ZSTD = 1, 2, 5  # Blosc compressor codes (blosc.h)
CUBE = {"chunk": 16, "clevel": 8}  # the earlier default chunks (cubes; here of 16 voxels for a small volume)
LAYOUTS = {  # name: (writer options, written as the writer before the fused layout did: Blosc2 picks the block size)
    "default": ({}, False),
    "zstd": ({"codec": "zstd", "clevel": 8}, False),  # the smaller, slower choice, same chunks
    "cubic": (CUBE, False),
    "per_modality": ({**CUBE, "fused": False}, False),
    "old_lz4hc": ({**CUBE, "fused": False}, True),
    "old_lz4": ({"chunk": 16, "codec": "lz4", "clevel": 5, "fused": False}, True),
}


def _old_filters(codec: str, clevel: int, shuffle: str, chunk_bytes: int) -> dict:
    """The earlier writer's dataset options: no block size in the filter values (Blosc2 chooses it)."""
    return dict(fletcher32=True, **hdf5plugin.Blosc2(cname=codec, clevel=clevel, filters=SHUFFLES[shuffle]))


def _write(path, img, lab, options: dict, old: bool) -> None:
    with pytest.MonkeyPatch.context() as mp:
        if old:
            mp.setattr(cache_writer, "_filters", _old_filters)
        with CacheWriter(path, modalities=BRATS_MODALITIES, labels=BRATS_LABELS, **options) as w:
            w.add_case("c0", img, lab, availability=[True] * 4)
            w.set_split("train", ["c0"])


@pytest.fixture(scope="module")
def caches(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("layout")
    img, lab, _ = make_case(0, SynthSettings(shape=(40, 48, 40), seed=5))
    paths = {}
    for name, (options, old) in LAYOUTS.items():
        paths[name] = tmp / f"{name}.h5"
        _write(paths[name], img, lab, options, old)
    return paths, img, lab


def _blosc_codec(path, name: str) -> tuple[int, int]:
    """(compressor code, clevel) from the Blosc2 filter's parameters (hdf5plugin: cd_values[4:7])."""
    with h5py.File(path) as f:
        plist = f[f"cases/c0/{name}"].id.get_create_plist()
        cd = plist.get_filter(0)[2]
    return int(cd[6]), int(cd[4])


def test_default_is_lz4hc_level_9_and_the_other_settings_keep_their_codecs(caches):
    paths, _, _ = caches
    assert _blosc_codec(paths["default"], "image") == (BLOSC_LZ4HC, 9)
    assert _blosc_codec(paths["default"], "label") == (BLOSC_LZ4HC, 9)
    assert _blosc_codec(paths["cubic"], "image") == (BLOSC_LZ4HC, 8)
    assert _blosc_codec(paths["old_lz4"], "image") == (BLOSC_LZ4, 5)
    assert _blosc_codec(paths["zstd"], "image") == (BLOSC_ZSTD, 8)
    assert _blosc_codec(paths["zstd"], "label") == (BLOSC_ZSTD, 8)


def test_default_chunks_hold_every_modality_and_whole_rows_in_one_blosc2_block(caches):
    paths, _, _ = caches
    with h5py.File(paths["default"]) as f:  # the volume is 40 x 48 x 40: rows of 40 voxels
        image, label = f["cases/c0/image"], f["cases/c0/label"]
        assert image.chunks == (4, 16, 16, 40) and label.chunks == (16, 16, 40)
        assert image.id.get_create_plist().get_filter(0)[2][1] == 4 * 4 * 16 * 16 * 40  # cd_values[1]: block size
        assert label.id.get_create_plist().get_filter(0)[2][1] == 16 * 16 * 40
    with h5py.File(paths["cubic"]) as f:
        assert f["cases/c0/image"].chunks == (4, 16, 16, 16)
    with h5py.File(paths["per_modality"]) as f:
        assert f["cases/c0/image"].chunks == (1, 16, 16, 16)


def test_one_block_per_chunk_lets_every_chunk_be_decoded_directly(tmp_path):
    """LZ4 clevel 5 would split a 4 x 32^3 float chunk (512 KiB) into two Blosc2 blocks (b2nd lays those out block
    by block, so they go through the slow b2nd path); the writer asks for one block per chunk."""
    img, lab, _ = make_case(1, SynthSettings(shape=(40, 48, 40), seed=5))
    for name, old in (("new", False), ("old", True)):
        path = tmp_path / f"{name}.h5"
        _write(path, img, lab, {"chunk": 32, "codec": "lz4", "clevel": 5}, old)
        reader = CacheReader(path, threads=1)
        try:
            np.testing.assert_array_equal(reader.read_case("c0")[0], img)
            kinds = reader._index["c0/image"].kinds
        finally:
            reader.close()
        if old:
            assert (kinds == _SPECIAL).any()  # what the fixed block size avoids
        else:
            assert set(np.unique(kinds).tolist()) <= {_DATA, _ZERO} and (kinds == _DATA).any()


@pytest.mark.parametrize("which", list(LAYOUTS))
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


def test_default_cache_is_smaller_than_the_earlier_layouts(caches):
    paths, _, _ = caches
    size = {name: path.stat().st_size for name, path in paths.items()}
    assert size["default"] < 0.97 * size["old_lz4"]
    assert size["default"] < 0.99 * size["per_modality"] and size["default"] < 0.99 * size["old_lz4hc"]
    assert size["default"] < size["cubic"]
    assert size["zstd"] < size["default"]  # ZSTD's entropy coding against LZ4HC 9, same chunks


def test_zstd_chunks_are_single_blocks_decoded_directly(caches):
    """ZSTD chunks too are one Blosc2 block each: the direct reader decodes every one without the b2nd path."""
    paths, _, _ = caches
    reader = CacheReader(paths["zstd"], threads=1)
    try:
        reader.read_case("c0")
        for name in ("image", "label"):
            kinds = reader._index[f"c0/{name}"].kinds
            assert set(np.unique(kinds).tolist()) <= {_DATA, _ZERO} and (kinds == _DATA).any()
    finally:
        reader.close()
