"""The augmentation benchmark keeps running: --smoke (tiny sizes) prints one JSON line with both contenders."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bench_augment  # noqa: E402


@pytest.mark.slow
def test_bench_augment_smoke_reports_both_contenders_and_the_breakdown(capsys):
    bench_augment.main(["--smoke", "--breakdown"])
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(out["results"]) == {"light 16", "nnunet 16"}
    assert all(r["patches_per_s"] > 0 and r["workers_for_target"] >= 1 for r in out["results"].values())
    names = [key.split(": ")[1] for key in out["breakdown"]["16"]]
    assert names == ["spatial", "gaussian_noise", "gaussian_blur", "brightness", "contrast", "low_resolution",
                     "gamma", "gamma", "mirror"]
