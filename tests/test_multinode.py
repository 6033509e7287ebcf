"""One run over two torchrun agents ("nodes" on one machine) that meet at a c10d rendezvous on localhost, one gloo
process each: the result equals one process with the same global batch (the tolerance of the 2-process test in
test_distributed.py), rank 0 alone writes the run folder, and SIGTERM to one agent stops both ranks at the same
step with a checkpoint that the two agents resume.
"""

from __future__ import annotations

import csv
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import FAST
from prism.engine.checkpoint import load_checkpoint
from prism.engine.trainer import CHECKPOINT_NAME

SGD = ["strategy.name=standard", "data.batch_size=2", "optim.name=sgd", "train.log_every=1",
       "train.checkpoint_every=1000", "train.loggers=[csv]"]  # SGD: see test_distributed.py


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _one_process(run: Path, cache: Path, *overrides: str) -> dict:
    cmd = [sys.executable, "-m", "prism.cli.train", "--data", str(cache), "-o", str(run), "--no-eval", *FAST,
           *SGD, *overrides]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return load_checkpoint(run / CHECKPOINT_NAME)["model"]


def _agents(run: Path, cache: Path, *overrides: str, resume: bool = False) -> list[subprocess.Popen]:
    """Two torchrun agents, one process each, meeting at a c10d rendezvous on localhost."""
    port, rdzv = _free_port(), f"prism-{os.getpid()}-{time.monotonic_ns()}"
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1",
                "--rdzv_backend=c10d", f"--rdzv_endpoint=127.0.0.1:{port}", f"--rdzv_id={rdzv}"]
    args = ["--resume", str(run)] if resume else ["--data", str(cache), "-o", str(run), *FAST, *SGD, *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return [subprocess.Popen([*launcher, "-m", "prism.cli.train", "--no-eval", *args], stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)]


def _finish(agents: list[subprocess.Popen], timeout: float = 300) -> list[tuple[int, str]]:
    out = []
    try:
        for agent in agents:
            err = agent.communicate(timeout=timeout)[1]
            out.append((agent.returncode, err))
    finally:
        for agent in agents:
            if agent.poll() is None:
                agent.kill()
                agent.wait()
    return out


def _logged_steps(run: Path) -> list[int]:
    try:
        with open(run / "train_log.csv", newline="") as fh:
            return [int(row["step"]) for row in csv.DictReader(fh)]
    except OSError:
        return []


def _assert_close(one: dict, two: dict) -> None:
    assert one.keys() == two.keys()
    for k in one:
        torch.testing.assert_close(two[k], one[k], rtol=1e-4, atol=1e-5, msg=k)


def _family(pids: list[int]) -> set[int]:
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    family = set(pids)
    while more := {p for p, parent in parents.items() if parent in family} - family:
        family |= more
    return family


@pytest.mark.slow
def test_two_agents_match_one_process_and_rank_0_alone_writes_the_run(tiny_cache, tmp_path):
    one = _one_process(tmp_path / "one", tiny_cache, "train.steps=3")
    results = _finish(_agents(tmp_path / "two", tiny_cache, "train.steps=3"))
    assert [code for code, _ in results] == [0, 0], results[0][1][-3000:] + results[1][1][-3000:]
    _assert_close(one, load_checkpoint(tmp_path / "two" / CHECKPOINT_NAME)["model"])
    assert _logged_steps(tmp_path / "two") == [1, 2, 3]  # one log, written once per step
    assert not [p.name for p in (tmp_path / "two").iterdir() if ".tmp-" in p.name]  # no second writer's leftovers


@pytest.mark.slow
def test_sigterm_to_one_agent_stops_both_ranks_with_a_checkpoint_the_two_agents_resume(tiny_cache, tmp_path):
    run = tmp_path / "two"
    agents = _agents(run, tiny_cache, "train.steps=12")
    deadline = time.time() + 300
    while time.time() < deadline and all(a.poll() is None for a in agents) and len(_logged_steps(run)) < 2:
        time.sleep(0.05)
    family = _family([a.pid for a in agents])
    agents[1].send_signal(signal.SIGTERM)  # one node preempted: its agent passes SIGTERM to its rank
    results = _finish(agents)
    step = load_checkpoint(run / CHECKPOINT_NAME)["step"]
    assert 2 <= step < 12 and _logged_steps(run) == list(range(1, step + 1))
    assert any(f"stopped by SIGTERM at step {step}/12" in err for _, err in results), results
    assert all(code != 0 for code, _ in results)  # neither agent reports a finished run
    time.sleep(1)
    alive = [p for p in family if Path(f"/proc/{p}").exists()
             and Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"]
    assert not alive, "a rank outlived its agent"

    resumed = _finish(_agents(run, tiny_cache, resume=True))
    assert [code for code, _ in resumed] == [0, 0], resumed[0][1][-3000:] + resumed[1][1][-3000:]
    assert load_checkpoint(run / CHECKPOINT_NAME)["step"] == 12 and _logged_steps(run) == list(range(1, 13))
    _assert_close(_one_process(tmp_path / "one", tiny_cache, "train.steps=12"),
                  load_checkpoint(run / CHECKPOINT_NAME)["model"])
