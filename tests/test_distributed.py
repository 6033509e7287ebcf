"""Two CPU processes (gloo, launched by torchrun) reach the same parameters as one process with the same
global batch."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from conftest import FAST
from prism.engine.checkpoint import load_checkpoint
from prism.engine.trainer import CHECKPOINT_NAME


def train(run, cache, overrides, nproc):
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    prefix = launcher if nproc > 1 else [sys.executable]
    cmd = [*prefix, "-m", "prism.cli.train", "--data", str(cache), "-o", str(run), "--no-eval", *FAST, *overrides]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return load_checkpoint(run / CHECKPOINT_NAME)["model"]


@pytest.mark.parametrize("strategy", ["standard", "meta_drop"])
def test_two_processes_match_one(tiny_cache, tmp_path, strategy):
    # SGD: Adam would amplify float rounding in near-zero gradients into lr-sized steps
    overrides = [f"strategy.name={strategy}", "train.steps=3", "data.batch_size=2", "optim.name=sgd"]
    one = train(tmp_path / "one", tiny_cache, overrides, 1)
    two = train(tmp_path / "two", tiny_cache, overrides, 2)
    assert one.keys() == two.keys()
    for k in one:
        torch.testing.assert_close(one[k], two[k], rtol=1e-4, atol=1e-5, msg=k)
    log = (tmp_path / "two" / "train_log.csv").read_text().splitlines()
    assert len(log) == 1 + 2  # rank 0 alone writes the log (steps 2 and 3)


def test_global_batch_must_split_evenly(tiny_cache, tmp_path):
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    done = subprocess.run([*launcher, "-m", "prism.cli.train", "--data", str(tiny_cache), "-o", str(tmp_path / "r"),
                           *FAST, "data.batch_size=3"], capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert "data.batch_size: the global batch 3 must be divisible by the 2 processes" in done.stderr
