"""A run killed (SIGKILL) at an arbitrary moment resumes to the same parameters as an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import FAST, fast_config
from prism.engine.checkpoint import load_checkpoint
from prism.engine.trainer import CHECKPOINT_NAME, Trainer


@pytest.mark.parametrize("strategy, kill_after", [("standard", 2), ("meta_drop", 3)])
def test_sigkill_then_resume_is_exact(tiny_cache, tmp_path, strategy, kill_after):
    overrides = [*FAST, f"strategy.name={strategy}", "train.steps=7", "train.checkpoint_every=1"]
    run = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "prism.cli.train", "--data", str(tiny_cache), "-o", str(run),
                             "--no-eval", *overrides], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    try:
        while time.time() < deadline and proc.poll() is None:
            ckpt = run / CHECKPOINT_NAME
            if ckpt.exists() and load_checkpoint(ckpt)["step"] >= kill_after:
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the run finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    state = load_checkpoint(run / CHECKPOINT_NAME)  # never unreadable
    assert kill_after <= state["step"] < 7
    cfg = fast_config(f"strategy.name={strategy}", "train.steps=7", "train.checkpoint_every=1", cache=tiny_cache)
    resumed = Trainer(cfg, run, cache_path=tiny_cache, resume=True)
    resumed.fit()
    straight = Trainer(cfg, tmp_path / "straight", cache_path=tiny_cache)
    straight.fit()
    for a, b in zip(straight.ctx.parameters(), resumed.ctx.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert [p.name for p in run.iterdir() if ".tmp" in p.name] == []  # a killed writer's temp file is cleaned
