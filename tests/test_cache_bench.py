"""benchmarks/bench_cache.py runs end to end at a tiny size (no timing is asserted) and nnU-Net's blosc2 layout
rule gives the blocks and chunks worked out by hand from its description."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_cache  # noqa: E402


def test_nnunet_layout_follows_its_cache_rule():
    # 4 x float32, 128^3 patch: blocks halve (last axis first on ties) from 128^3 until 4 * 4 * prod <= 0.8 * 32 KiB
    # -> 16 x 8 x 8; chunks add blocks (fewest blocks first, first axis on ties) until >= 0.8 * 1.375 MiB
    assert bench_cache.nnunet_layout((4, 140, 170, 140), (128, 128, 128), 4) == ((4, 16, 8, 8), (4, 80, 32, 32))
    # int16 segmentation with one channel: 2 * prod <= 26214 -> 32 x 16 x 16 blocks
    blocks, chunks = bench_cache.nnunet_layout((1, 140, 170, 140), (128, 128, 128), 2)
    assert blocks == (1, 32, 16, 16) and 2 * 140 * 80 * 64 >= 0.8 * 1441792 > 2 * 140 * 80 * 48
    assert chunks == (1, 140, 80, 64)


@pytest.mark.slow
def test_bench_cache_prints_both_ways_of_reading_for_every_size(capsys):
    bench_cache.main(["--cases", "2", "--patches", "2", "--repeats", "2", "--shape", "40", "44", "40",
                      "--sizes", "16", "24"])
    out = capsys.readouterr().out
    for size in (16, 24):
        for how in ("new arrays", "into buffers"):
            assert f"{size}^3 {how} vs LZ4HC .b2nd:" in out and f"{size}^3 {how} vs nnU-Net defaults:" in out
    for name in bench_cache.CACHES:  # the default and the smaller ZSTD setting, each with its disk and verdict
        assert f"{name}, same run" in out
    assert out.count("disk: ") == 2 and out.count("target (") == 2
    record = json.loads(out.strip().splitlines()[-1])
    assert record["bench"] == "cache" and set(record["target_met"]) == set(bench_cache.CACHES)
    assert record["disk_bytes"][bench_cache.NNUNET] > record["b2nd_arrays_bytes"][bench_cache.NNUNET]  # + pickle
    assert len(record["ratios_median_q1_q3_repeat_min_max"][bench_cache.PRISM]) == 2 * 2 * 2  # sizes, reads, refs


def test_nnunet_properties_sample_each_region_by_its_rule():
    """Regions of 5, 150 and 20,000 voxels: every voxel of the small ones (fewer than 10,000), 10,000 of the large
    one (more than 1% of it), each row (channel 0, z, y, x) a distinct voxel of its region."""
    label = np.zeros((30, 30, 30), np.uint8)
    label.reshape(-1)[:20000] = 2  # edema: whole tumour only
    label.reshape(-1)[20000:20145] = 1  # necrotic core: whole tumour and core
    label.reshape(-1)[20145:20150] = 3  # enhancing: all three regions
    locations = bench_cache.nnunet_properties(label)["class_locations"]
    sizes = {(1, 2, 3): 10000, (1, 3): 150, (3,): 5}
    assert {k: len(v) for k, v in locations.items()} == sizes
    for region, coords in locations.items():
        assert coords.dtype == np.int64 and coords.shape[1] == 4 and (coords[:, 0] == 0).all()
        assert np.isin(label[tuple(coords[:, 1:].T)], region).all()
        assert len(np.unique(coords, axis=0)) == len(coords)
    big = np.full((110, 110, 110), 3, np.uint8)  # 1,331,000 voxels: 1% (13,310) is more than 10,000
    assert len(bench_cache.nnunet_properties(big)["class_locations"][(3,)]) == 13310
