"""The HDF5 cache: round trip, patch reads, atomic build, and clear errors for bad files."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from prism.data.cache_format import BRATS_LABELS
from prism.data.cache_reader import CacheReader
from prism.data.cache_writer import CacheWriter
from prism.data.patches import PatchDataset, collate_batch
from prism.errors import CacheError

MODS = ("flair", "t1ce", "t1", "t2")


def write(path, n=2, shape=(10, 12, 14)):
    rng = np.random.default_rng(0)
    data = {}
    with CacheWriter(path, modalities=MODS, labels=BRATS_LABELS, chunk=8) as w:
        for i in range(n):
            img = rng.standard_normal((4, *shape)).astype(np.float32)
            lab = rng.integers(0, 4, shape).astype(np.uint8)
            w.add_case(f"c{i}", img, lab, availability=[True, i == 0, True, True], spacing=(1, 1, 2))
            data[f"c{i}"] = (img, lab)
        w.set_split("train", [f"c{i}" for i in range(n)])
    return data


def test_roundtrip_and_patch_reads(tmp_path):
    path = tmp_path / "c.h5"
    data = write(path)
    r = CacheReader(path)
    assert r.modalities == MODS and r.case_ids == ("c0", "c1") and r.split("train") == ("c0", "c1")
    img, lab = r.read_case("c1")
    np.testing.assert_array_equal(img, data["c1"][0])
    np.testing.assert_array_equal(lab, data["c1"][1])
    pimg, plab = r.read_patch("c0", (2, 3, 4), (5, 6, 7))
    np.testing.assert_array_equal(pimg, data["c0"][0][:, 2:7, 3:9, 4:11])
    np.testing.assert_array_equal(plab, data["c0"][1][2:7, 3:9, 4:11])
    info = r.info("c1")
    assert info.availability == (True, False, True, True) and info.spacing == (1.0, 1.0, 2.0)
    fg = r.foreground("c0")
    assert len(fg) and (data["c0"][1][tuple(fg.T)] > 0).all()
    with h5py.File(path) as f:
        assert f["cases/c0/image"].chunks == (4, 8, 8, 8) and f["cases/c0/image"].fletcher32  # all modalities


def test_patches_pad_small_volumes_and_zero_missing_modalities(tmp_path):
    path = tmp_path / "c.h5"
    write(path)
    ds = PatchDataset(CacheReader(path), ["c1"], (16, 16, 16), flip=False)
    batch = collate_batch([ds[0], ds[1]])
    assert batch.image.shape == (2, 4, 16, 16, 16) and batch.label.shape == (2, 16, 16, 16)
    assert batch.image[:, 1].abs().sum() == 0  # T1ce does not exist for c1
    assert batch.image[:, :, 10:].abs().sum() == 0 and (batch.label[:, 10:] == 0).all()  # padding
    assert batch.availability.tolist() == [[True, False, True, True]] * 2
    again = ds[0]
    assert (again["image"] == ds[0]["image"]).all()  # a sample number always gives the same patch


def test_interrupted_build_leaves_nothing(tmp_path):
    path = tmp_path / "c.h5"
    with pytest.raises(KeyboardInterrupt):
        with CacheWriter(path, modalities=MODS, labels=BRATS_LABELS) as w:
            w.add_case("c0", np.zeros((4, 8, 8, 8), np.float32), np.zeros((8, 8, 8), np.uint8), availability=[1] * 4)
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_writer_rejects_bad_cases(tmp_path):
    with pytest.raises(CacheError, match=r"case bad: label values \[7\] are not in the label map"):
        with CacheWriter(tmp_path / "c.h5", modalities=MODS, labels=BRATS_LABELS) as w:
            w.add_case("bad", np.zeros((4, 8, 8, 8), np.float32), np.full((8, 8, 8), 7, np.uint8),
                       availability=[1] * 4)
    assert list(tmp_path.iterdir()) == []


def test_reader_errors_are_one_line(tmp_path):
    path = tmp_path / "c.h5"
    write(path)
    with pytest.raises(CacheError, match="cache file not found"):
        CacheReader(tmp_path / "none.h5")
    trunc = tmp_path / "t.h5"
    trunc.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CacheError, match="t.h5: not a readable HDF5 file"):
        CacheReader(trunc)
    with h5py.File(path, "a") as f:
        f.attrs["format_version"] = 99
    with pytest.raises(CacheError, match="format version 99 cannot be read"):
        CacheReader(path)
    plain = tmp_path / "p.h5"
    with h5py.File(plain, "w") as f:
        f["x"] = 1
    with pytest.raises(CacheError, match="not a prism cache"):
        CacheReader(plain)


def test_reader_reopens_after_pickling(tmp_path):
    import pickle

    path = tmp_path / "c.h5"
    write(path)
    r = CacheReader(path)
    r.read_case("c0")
    clone = pickle.loads(pickle.dumps(r))  # what a DataLoader worker receives
    assert clone._file is None
    np.testing.assert_array_equal(clone.read_case("c0")[1], r.read_case("c0")[1])


@pytest.mark.parametrize("index", [0, 1, 2])
def test_synthetic_contrasts_carry_different_information(index):
    from prism.data_tools.synthetic import SynthSettings, make_case

    img, lab, _ = make_case(index, SynthSettings(shape=(48, 48, 48), noise=0.0, bias=0.0))
    assert set(np.unique(lab)) == {0, 1, 2, 3}
    brain = img[0] != 0

    def contrast(m, a, b):
        return abs(img[m][(lab == a) & brain].mean() - img[m][(lab == b) & brain].mean())

    flair, t1ce, t1, t2 = range(4)
    # edema stands out on FLAIR and T2, much less on T1ce
    assert contrast(flair, 2, 0) > 1.5 * contrast(t1ce, 2, 0)
    assert contrast(t2, 2, 0) > 1.5 * contrast(t1ce, 2, 0)
    # only T1ce separates enhancing tumour from the rest of the core
    others = max(contrast(m, 3, 1) for m in (flair, t1, t2))
    assert contrast(t1ce, 3, 1) > 1.5 * others


def test_direct_chunk_reads_match_hdf5_everywhere(tmp_path):
    """Direct Blosc2 decoding (1 and 3 threads) gives HDF5's bytes: edges, zero chunks, a missing modality."""
    path = tmp_path / "c.h5"
    rng = np.random.default_rng(1)
    shape = (19, 22, 13)
    img = rng.standard_normal((4, *shape)).astype(np.float32)
    img[:, :8] = 0  # whole all-zero chunks (stored as Blosc2 special values)
    img[1] = 0  # a missing modality
    lab = rng.integers(0, 4, shape).astype(np.uint8)
    with CacheWriter(path, modalities=MODS, labels=BRATS_LABELS, chunk=8) as w:
        w.add_case("c0", img, lab, availability=[True, False, True, True])
        w.set_split("train", ["c0"])
    slow = CacheReader(path, checksums=True)
    assert slow._direct_index("c0", "image") is None
    for threads in (1, 3):
        fast = CacheReader(path, threads=threads)
        assert fast._direct_index("c0", "image") is not None and fast._direct_index("c0", "label") is not None
        for _ in range(2):  # the second pass uses the remembered zero chunks
            for start, size in [((0, 0, 0), shape), ((3, 5, 7), (9, 11, 6)), ((7, 0, 4), (1, 22, 1)),
                                ((16, 17, 8), (8, 8, 8)), ((-2, 3, 9), (6, 6, 6))]:
                want = slow.read_region("c0", start, size)
                got = fast.read_region("c0", start, size)
                np.testing.assert_array_equal(got[0], want[0])
                np.testing.assert_array_equal(got[1], want[1])
                assert got[0].dtype == np.float32 and got[1].dtype == np.uint8
        np.testing.assert_array_equal(fast.read_case("c0")[0], img)
        np.testing.assert_array_equal(fast.read_case("c0")[1], lab)
        kinds = fast._index["c0/image"].kinds
        assert (kinds == 2).any() and (kinds == 1).any()  # zero chunks remembered, data chunks decoded directly
        fast.close()


def test_direct_reader_handles_other_layouts(tmp_path):
    """Multi-block Blosc2 chunks are decoded through b2nd; other filters are left to HDF5."""
    import hdf5plugin

    from prism.data.direct_chunks import DirectChunkReader, chunk_index

    path = tmp_path / "x.h5"
    data = np.random.default_rng(2).standard_normal((70, 64, 64)).astype(np.float32)
    with h5py.File(path, "w") as f:
        f.create_dataset("blosc", data=data, chunks=(64, 64, 64), fletcher32=True,
                         **hdf5plugin.Blosc2(cname="lz4", clevel=5, filters=hdf5plugin.Blosc2.SHUFFLE))
        f.create_dataset("gzip", data=data, chunks=(16, 16, 16), compression="gzip")
    with h5py.File(path, "r") as f:
        assert chunk_index(f["gzip"]) is None
        index = chunk_index(f["blosc"])
    assert index is not None and index.trailer == 4
    reader = DirectChunkReader(path, threads=2)
    np.testing.assert_array_equal(reader.read(index, (3, 10, 0), (69, 64, 50)), data[3:69, 10:64, 0:50])
    assert (index.kinds == 3).all()  # several blocks per chunk: not C order, decoded through b2nd
    reader.close()


def test_checksummed_reads_catch_damage(tmp_path):
    path = tmp_path / "c.h5"
    write(path, n=1, shape=(16, 16, 16))
    with h5py.File(path, "r") as f:
        info = f["cases/c0/image"].id.get_chunk_info_by_coord((0, 8, 8, 8))
    raw = bytearray(path.read_bytes())
    raw[info.byte_offset + info.size // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(CacheError, match="case 'c0' is corrupted"):
        CacheReader(path, checksums=True).read_patch("c0", (8, 8, 8), (8, 8, 8))


def test_writer_compression_options(tmp_path):
    """Another codec / level / shuffle is still a v1 file: HDF5 and the direct reader read it the same."""
    path = tmp_path / "fast.h5"
    img = np.random.default_rng(3).standard_normal((4, 9, 10, 11)).astype(np.float32)
    lab = np.zeros((9, 10, 11), np.uint8)
    with CacheWriter(path, modalities=MODS, labels=BRATS_LABELS, chunk=8, clevel=1, shuffle="none") as w:
        w.add_case("c0", img, lab, availability=[True] * 4)
        w.set_split("train", ["c0"])
    with h5py.File(path) as f:
        _, _, cd, _ = f["cases/c0/image"].id.get_create_plist().get_filter(0)
        assert cd[4:6] == (1, 0)  # clevel 1, no shuffle recorded in the filter's parameters
    fast = CacheReader(path)
    np.testing.assert_array_equal(fast.read_case("c0")[0], img)
    assert (fast._index["c0/image"].kinds == 1).all()  # decoded on the direct path, not through b2nd
    np.testing.assert_array_equal(CacheReader(path, checksums=True).read_case("c0")[0], img)
    with pytest.raises(CacheError, match="compression: codec must be one of"):
        CacheWriter(tmp_path / "x.h5", modalities=MODS, labels=BRATS_LABELS, shuffle="sideways")


def test_chunk_shapes_take_whole_rows_in_even_parts():
    from prism.data.cache_format import MAX_ROW, chunk_shape

    assert chunk_shape((16, 16, 0), (140, 170, 155)) == (16, 16, 155)  # a BraTS brain box: whole rows
    assert chunk_shape((16, 16, 0), (140, 170, 400)) == (16, 16, 134)  # 400 in 3 even parts of at most 192
    assert chunk_shape((16, 16, 0), (10, 170, MAX_ROW + 1)) == (10, 16, 97)
    assert chunk_shape(32, (40, 20, 50)) == (32, 20, 32)  # one edge for every axis, clipped to the volume
    with pytest.raises(ValueError):
        chunk_shape((16, 16), (40, 40, 40))


def test_patches_read_into_given_buffers_equal_new_arrays(tmp_path):
    path = tmp_path / "c.h5"
    data = write(path, shape=(19, 22, 13))
    for options in ({"threads": 1}, {"threads": 3}, {"checksums": True}):
        reader = CacheReader(path, **options)
        image = np.full((4, 7, 9, 5), np.nan, np.float32)  # garbage in the buffer must not survive
        label = np.full((7, 9, 5), 255, np.uint8)
        got = reader.read_patch("c0", (3, 4, 6), (7, 9, 5), out=(image, label))
        assert got[0] is image and got[1] is label
        np.testing.assert_array_equal(image, data["c0"][0][:, 3:10, 4:13, 6:11])
        np.testing.assert_array_equal(label, data["c0"][1][3:10, 4:13, 6:11])
        with pytest.raises(ValueError, match="out must be C-contiguous float32"):
            reader.read_patch("c0", (0, 0, 0), (4, 4, 4), out=(np.zeros((4, 4, 4, 5), np.float32),
                                                                 np.zeros((4, 4, 4), np.uint8)))
        reader.close()


def test_nan_in_a_chunk_is_refused_naming_the_case_and_modality_on_every_read_path(tmp_path):
    path = tmp_path / "c.h5"
    write(path, n=2, shape=(16, 16, 16))
    with h5py.File(path, "r+") as f:
        image = f["cases/c1/image"]
        block = image[2]
        block[12, 3, 9] = np.inf
        image[2] = block
    for options in ({"threads": 1}, {"checksums": True}):
        reader = CacheReader(path, **options)
        reader.read_patch("c0", (0, 0, 0), (16, 16, 16))  # the sound case reads
        reader.read_patch("c1", (0, 0, 0), (8, 8, 8))  # and so do the sound chunks of the other
        for _ in range(2):  # refused again: a failed check is not remembered as passed
            with pytest.raises(CacheError, match=r"c\.h5: case 'c1' is corrupted: image, modality t1 holds NaN or "
                                                 r"Inf voxels"):
                reader.read_patch("c1", (8, 0, 8), (8, 8, 8))
        reader.close()
