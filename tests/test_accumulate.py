"""train.accumulate: N accumulated batches make the same optimisation step as one step on the N batches
concatenated (in float64, with a backbone free of batch statistics and a loss that is a mean over samples), for
standard training and for Meta-Drop; a step counts optimisation steps; other strategies refuse it in one line."""

from __future__ import annotations

import csv
import subprocess
import sys
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from conftest import FAST, fast_config
from prism.batch import Batch
from prism.cli.train import main as train_main
from prism.engine.checkpoint import load_checkpoint
from prism.engine.run import build_run
from prism.engine.trainer import CHECKPOINT_NAME, Trainer
from prism.errors import ConfigError
from prism.loss import LossResult, LossTerm
from prism.registry import register

N, STEPS = 3, 2


class VoxelCrossEntropy(LossTerm):
    """Cross-entropy of the fused logits, the mean over every voxel of every sample: with samples of one size, the
    mean over a concatenated batch is the mean of the batches' means."""

    def __call__(self, output, batch):
        total = F.cross_entropy(output.logits, batch.label)
        return LossResult(total=total, parts={"voxel_ce": total.detach()})


@pytest.fixture(autouse=True)
def voxel_ce():
    register("loss", "voxel_ce", VoxelCrossEntropy)


def _config(cache, strategy: str, accumulate: int):
    # multi_unet: instance norms (per-sample statistics) and no dropout, so a sample's output does not depend on
    # the others in its batch
    return fast_config(f"strategy.name={strategy}", f"train.accumulate={accumulate}", "data.batch_size=1",
                       "losses=[{name: voxel_ce}]", f"train.steps={STEPS}", "train.loggers=[csv]",
                       "train.channels_last=false", cache=cache)


def _float64(run) -> None:
    """The run's model in float64 and every batch it draws with a float64 image."""
    run.model.double()
    draw = run.ctx.next_batch

    def next_batch(stream: str = "train", policy: str = "train") -> Batch:
        batch = draw(stream, policy)
        return replace(batch, image=batch.image.double())

    run.ctx.next_batch = next_batch


def _concatenated(batches: list[Batch]) -> Batch:
    return Batch(image=torch.cat([b.image for b in batches]), label=torch.cat([b.label for b in batches]),
                 mask=torch.cat([b.mask for b in batches]), availability=torch.cat([b.availability for b in batches]),
                 case_ids=[c for b in batches for c in b.case_ids])


def _train(run, steps: int) -> None:
    for _ in range(steps):
        run.strategy.step(run.ctx)
        run.scheduler.step()
        run.ctx.step += 1


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["standard", "meta_drop"])
def test_accumulated_batches_make_the_step_of_the_concatenated_batch(tiny_cache, strategy):
    accumulated = build_run(_config(tiny_cache, strategy, N), cache_path=tiny_cache)
    plain = build_run(_config(tiny_cache, strategy, 1), cache_path=tiny_cache)
    try:
        _float64(accumulated)
        _float64(plain)
        start = [p.detach().clone() for p in accumulated.ctx.parameters()]
        assert all(torch.equal(a, b) for a, b in zip(start, plain.ctx.parameters(), strict=True))  # one seed
        drawn: dict[str, list[Batch]] = {}
        record = accumulated.ctx.next_batch

        def recording(stream: str = "train", policy: str = "train") -> Batch:
            batch = record(stream, policy)
            drawn.setdefault(stream, []).append(batch)
            return batch

        accumulated.ctx.next_batch = recording
        _train(accumulated, STEPS)
        assert {s: len(b) for s, b in drawn.items()} == {s: N * STEPS for s in drawn}  # N batches per step
        # the plain run gets, for each stream and step, the N batches concatenated (masks as drawn)
        queues = {s: [_concatenated(b[i:i + N]) for i in range(0, len(b), N)] for s, b in drawn.items()}
        plain.ctx.next_batch = lambda stream="train", policy="train": queues[stream].pop(0)
        _train(plain, STEPS)
        assert all(not q for q in queues.values())
        moved = False
        for a, b, s in zip(accumulated.ctx.parameters(), plain.ctx.parameters(), start, strict=True):
            assert a.dtype == torch.float64
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
            moved = moved or not torch.equal(a, s)
        assert moved
    finally:
        accumulated.close()
        plain.close()


@pytest.mark.slow
def test_a_step_counts_optimisation_steps_and_its_batches(tiny_cache, tmp_path):
    cfg = fast_config("train.accumulate=2", "train.steps=4", "train.log_every=2", "train.loggers=[csv]",
                      "data.batch_size=1", cache=tiny_cache)
    trainer = Trainer(cfg, tmp_path / "run", cache_path=tiny_cache)
    rows = trainer.fit()
    assert trainer.ctx.step == 4
    assert trainer.ctx.streams.positions["train"] == 8  # two batches a step
    assert [int(r["step"]) for r in rows] == [2, 4]
    expected_lr = cfg.optim.lr * (1 - 2 / 4) ** cfg.optim.poly_power  # the schedule counts the 4 steps
    assert rows[0]["lr"] == pytest.approx(expected_lr, rel=1e-9)
    trainer.close()
    with open(tmp_path / "run" / "train_log.csv", newline="") as fh:
        assert [int(r["step"]) for r in csv.DictReader(fh)] == [2, 4]


def test_a_strategy_that_does_not_accumulate_refuses_it(tiny_cache):
    with pytest.raises(ConfigError) as err:
        build_run(fast_config("strategy.name=maml", "train.accumulate=2", cache=tiny_cache), cache_path=tiny_cache)
    assert str(err.value) == ("train.accumulate: strategy 'maml' does not accumulate gradients over batches "
                              "(standard and meta_drop do); leave train.accumulate at 1")


def test_prism_train_refuses_it_in_one_line_and_writes_nothing(tiny_cache, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code = train_main(["--data", str(tiny_cache), "-o", str(tmp_path / "out"), "--no-eval", *FAST,
                       "strategy.name=reptile", "train.accumulate=4"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and "train.accumulate: strategy 'reptile' does not accumulate gradients" in err[0]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_two_processes_accumulating_match_one(tiny_cache, tmp_path):
    """Under torchrun the first batches of a step skip DDP's all-reduce (no_sync) and the last one averages the
    summed gradients over the processes: two processes reach the weights of one with the same global batch."""
    overrides = ["train.accumulate=2", "train.steps=2", "data.batch_size=2", "optim.name=sgd", "train.loggers=[csv]"]

    def train(run, nproc: int) -> dict[str, torch.Tensor]:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
        prefix = launcher if nproc > 1 else [sys.executable]
        done = subprocess.run([*prefix, "-m", "prism.cli.train", "--data", str(tiny_cache), "-o", str(run),
                               "--no-eval", *FAST, *overrides], capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        return load_checkpoint(run / CHECKPOINT_NAME)["model"]

    one, two = train(tmp_path / "one", 1), train(tmp_path / "two", 2)
    for key in one:
        torch.testing.assert_close(one[key], two[key], rtol=1e-4, atol=1e-5, msg=key)


def test_cuda_graphs_refuse_accumulation():
    from prism.config import build_config
    from prism.engine.compiled import cuda_graph_refusal

    cfg = build_config(None, ["train.accumulate=2", "train.cuda_graphs=true"])
    ctx = type("Ctx", (), {"device": torch.device("cuda"), "dist": type("D", (), {"enabled": False})(),
                           "scaler": None, "losses": type("L", (), {"terms": []})()})()
    assert cuda_graph_refusal(cfg, ctx) == "captures one batch per step; leave train.accumulate at 1"
