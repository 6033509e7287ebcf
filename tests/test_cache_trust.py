"""Cache trust: single flipped bytes across the cache's metadata never give a traceback. ``prism-data verify``
answers OK or one line (exit 2); opening and reading with CacheReader works or raises a CacheError."""

from __future__ import annotations

import re

import pytest

from prism.cli.data import main as data_main
from prism.data.cache_reader import CacheReader
from prism.errors import CacheError


def _offsets(data: bytes) -> list[int]:
    """Bytes of HDF5 metadata: object headers, B-trees, heaps, the case names, and the superblock region."""
    marks = [m.start() for m in re.finditer(rb"OHDR|TREE|HEAP|SNOD|GCOL|synth_00", data)]
    return sorted(set(marks[:40] + [m + 6 for m in marks[:20]] + list(range(0, 2048, 131))))


def test_flipped_metadata_bytes_never_give_a_traceback(tiny_cache, tmp_path, capsys):
    data = tiny_cache.read_bytes()
    outcomes = {"ok": 0, "refused": 0}
    for at in _offsets(data):
        bad = bytearray(data)
        bad[at] ^= 0xFF
        path = tmp_path / f"flip_{at}.h5"
        path.write_bytes(bytes(bad))
        capsys.readouterr()
        code = data_main(["verify", str(path)])
        out, err = capsys.readouterr()
        assert code in (0, 2), (at, err)
        assert len(err.strip().splitlines()) == (0 if code == 0 else 1), (at, err)
        try:
            reader = CacheReader(path)
            for case in reader.case_ids:
                reader.read_patch(case, (0, 0, 0), (8, 8, 8))
            reader.close()
            outcomes["ok"] += 1
        except CacheError as exc:
            assert str(path) in str(exc) and "\n" not in str(exc)
            outcomes["refused"] += 1
        path.unlink()
    assert outcomes["refused"] >= 20  # most flips land in metadata that matters


def test_a_corrupt_case_is_named_on_open(tiny_cache, tmp_path):
    import h5py

    path = tmp_path / "c.h5"
    path.write_bytes(tiny_cache.read_bytes())
    with h5py.File(path, "r+") as f:
        f["cases/synth_0004"].attrs["availability"] = [1, 1]  # two entries for four modalities
    with pytest.raises(CacheError, match=r"c\.h5: case 'synth_0004' is corrupted"):
        CacheReader(path)
