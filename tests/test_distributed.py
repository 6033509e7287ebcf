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


@pytest.mark.slow
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


@pytest.mark.slow
def test_global_batch_must_split_evenly(tiny_cache, tmp_path):
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    done = subprocess.run([*launcher, "-m", "prism.cli.train", "--data", str(tiny_cache), "-o", str(tmp_path / "r"),
                           *FAST, "data.batch_size=3"], capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert "data.batch_size: the global batch 3 must be divisible by the 2 processes" in done.stderr


def test_ddp_wraps_model_and_losses_and_gives_the_plain_gradients(tiny_cache, tmp_path):
    """One gloo process in this process: DDP around model + losses gives the plain step's gradients, and the
    meta-strategies that read gradients explicitly are not wrapped."""
    import torch.distributed as dist

    from conftest import fast_config
    from prism.engine.distributed import wrap_ddp
    from prism.engine.trainer import Trainer
    from prism.registry import get_registry

    assert get_registry().create("strategy", "standard").gradient_sync == "ddp"
    assert get_registry().create("strategy", "meta_drop").gradient_sync == "ddp"
    assert get_registry().create("strategy", "maml").gradient_sync == "explicit"
    trainer = Trainer(fast_config(cache=tiny_cache), tmp_path, cache_path=tiny_cache)
    ctx = trainer.ctx
    batch = ctx.next_batch("train")
    loss, _ = ctx.compute_loss(batch)
    plain = torch.autograd.grad(loss, ctx.parameters(), allow_unused=True)
    store = dist.HashStore()
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        wrapped = wrap_ddp(ctx.model, ctx.losses, torch.device("cpu"))
        ctx.zero_grad()
        loss_ddp, parts = wrapped(batch.image, batch.mask, batch)
        loss_ddp.backward()
        torch.testing.assert_close(loss_ddp, loss)
        for p, g in zip(ctx.parameters(), plain, strict=True):
            if g is None:
                assert p.grad is None or not p.grad.any()
            else:
                torch.testing.assert_close(p.grad, g)
    finally:
        dist.destroy_process_group()
