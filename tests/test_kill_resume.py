"""A prism-train process killed (SIGKILL) mid-run resumes to the same parameters as an uninterrupted run.

The process is killed once its checkpoint reached the wanted step, wherever it stands then (a checkpoint write
included), and its run is long enough never to finish first; the reference run trains to the same step as the
resumed one. So the outcome does not depend on timing.
"""

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
from prism.errors import CheckpointError

STEPS = 100_000  # never reached: the kill comes first
MORE = 3  # steps trained after the resume


def _checkpoint_step(run) -> int:
    try:
        return int(load_checkpoint(run / CHECKPOINT_NAME)["step"])
    except CheckpointError:  # not written yet
        return -1


@pytest.mark.slow
@pytest.mark.parametrize("strategy, kill_after", [("standard", 2), ("meta_drop", 3)])
def test_sigkill_then_resume_is_exact(tiny_cache, tmp_path, strategy, kill_after):
    overrides = [f"strategy.name={strategy}", f"train.steps={STEPS}", "train.checkpoint_every=1",
                 "train.loggers=[csv]"]
    run = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "prism.cli.train", "--data", str(tiny_cache), "-o", str(run),
                             "--no-eval", *FAST, *overrides], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None and _checkpoint_step(run) < kill_after:
            time.sleep(0.01)
        assert proc.poll() is None, "training ended before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    state = load_checkpoint(run / CHECKPOINT_NAME)  # never unreadable
    stopped = int(state["step"])
    assert stopped >= kill_after
    cfg = fast_config(*overrides, cache=tiny_cache)
    resumed = Trainer(cfg, run, cache_path=tiny_cache, resume=True)
    assert resumed.ctx.step == stopped
    resumed.fit(stop_at=stopped + MORE)
    resumed.close()
    straight = Trainer(cfg, tmp_path / "straight", cache_path=tiny_cache)
    straight.fit(stop_at=stopped + MORE)
    straight.close()
    for a, b in zip(straight.ctx.parameters(), resumed.ctx.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert [p.name for p in run.iterdir() if ".tmp" in p.name] == []  # a killed writer's temp file is cleaned
