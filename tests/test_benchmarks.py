"""The benchmark scripts keep running: gpu_suite --smoke (same code as on the GPU, tiny CPU sizes) and the launch
counter, whose model and optimizer phases must stay launch-lean."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

import bench_launches  # noqa: E402
import gpu_suite  # noqa: E402
from launch_counter import LaunchCounter  # noqa: E402


def test_launch_counter_counts_kernels_and_syncs_not_views():
    x = torch.ones(4, 3, requires_grad=True)
    with LaunchCounter() as c:
        y = (x * 2).t().contiguous().view(-1)  # mul, clone (t and view are views)
        y.sum().backward()  # sum; backward: ones_like, expand and t (views), mul
        y[y > 0].sum().item()  # gt, index with a bool mask (a sync), sum, item (a sync)
    assert c.ops == {"mul": 2, "clone": 1, "sum": 2, "ones_like": 1, "gt": 1, "index": 1}
    assert c.syncs == {"index (bool mask)": 1, "_local_scalar_dense": 1}


@pytest.mark.slow
def test_gpu_suite_smoke_prints_one_json_line_with_every_row(capsys):
    gpu_suite.main(["--smoke"])
    lines = capsys.readouterr().out.strip().splitlines()
    out = json.loads(lines[-1])  # strict JSON (no NaN)
    assert {"suite", "smoke", "device", "torch", "p1", "multi_unet", "strategies", "loader", "eval"} <= out.keys()
    assert out["smoke"] is True
    assert set(out["p1"]) == {"fp32", "bf16", "compiled", "cuda_graphs"}
    assert out["p1"]["fp32"]["ms"] > 0 and out["p1"]["bf16"]["peak_gib"] is None
    assert out["p1"]["cuda_graphs"]["refused"].startswith("train.cuda_graphs: needs a CUDA device")
    assert set(out["strategies"]) == {"standard", "meta_drop", "maml_first_order", "maml_second_order"}
    assert all(r["x_standard"] > 0 for k, r in out["strategies"].items() if k != "standard")
    assert all(r["patches_per_s"] > 0 for r in out["loader"].values()) and len(out["loader"]) == 2
    assert out["eval"]["loop_ms"] > 0 and out["eval"]["batched_ms"] > 0
    assert any(line.strip().startswith("P1 rfnet bf16") for line in lines)


@pytest.mark.slow
def test_bench_launches_rfnet_step_meets_its_targets_as_prism_train_runs_it(capsys):
    bench_launches.main(["--only", "rfnet w8"])
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    results = out["results"]
    assert (out["passion_ops"], out["passion_syncs"], out["passion_host_reads"]) == (11_782, 214, 576)
    step = results["rfnet w8 + prism + rfnet_sep"]
    logging_step = results["rfnet w8 + prism + rfnet_sep, logging step"]
    bf16 = results["rfnet w8 + prism + rfnet_sep, bf16 autocast"]
    assert step["ops"] <= 1_000 and step["syncs"] == 0  # no host sync on a step without a log row
    assert logging_step["syncs"] <= 1  # the interval's one read
    assert bf16["ops"] <= 1_100 and bf16["syncs"] == 0
    phases = [results[k] for k in ("model forward", "losses forward", "losses backward", "model backward",
                                   "optimizer (clip + step)")]
    assert abs(sum(p["ops"] for p in phases) - step["ops"]) <= 10  # the split accounts for the step
    model = results["model forward"]["ops"] + results["model backward"]["ops"]
    assert model <= 650, model  # conv, norm and activation once each way per unit; grouped fusion stacks
    assert results["model forward"]["syncs"] == results["model backward"]["syncs"] == 0
    assert results["optimizer (clip + step)"]["ops"] <= 12  # clipping and one fused step, no per-parameter ops
    assert results["optimizer (clip + step)"]["syncs"] == 0


def test_launch_counter_puts_host_reads_and_host_draws_apart_from_device_syncs():
    generator = torch.Generator().manual_seed(0)
    x = torch.ones(3)
    step = torch.tensor(1.0)  # e.g. a non-fused optimizer's step counter
    with LaunchCounter(host_tensors=lambda: [step]) as c:
        int(torch.randint(5, (1,), generator=generator))  # a task draw on a CPU generator: host work
        step.item()  # a host-resident scalar
        (x * 2).sum().item()  # device data: a sync
        x.tolist()  # a copy to the host: a sync, though it dispatches nothing on a CPU
        x.to("cpu")
        x.to(x.device)  # the run's own device: nothing
    assert c.ops == {"mul": 1, "sum": 1} and c.host_ops == {"randint": 1}
    assert c.syncs == {"_local_scalar_dense": 1, "tolist()": 1, "to()": 1}
    assert c.host_reads == {"_local_scalar_dense": 2}


def test_launch_counter_on_a_gpu_run_treats_cpu_tensors_as_host_data():
    with LaunchCounter(device="cuda") as c:
        torch.ones(2).sum().item()  # a CPU tensor while the run is on a GPU
    assert c.sync_total == 0 and c.host_read_total == 1
