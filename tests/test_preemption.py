"""Preemption and one writer per run folder, with real prism-train processes.

SIGTERM / SIGUSR1 / SIGINT sent to a training process mid-run: the step in flight finishes, ``last.pt`` is written
at that step, one line names the step and the resume command, the exit status is 143 / 143 / 130, and resuming
gives bitwise the parameters of an uninterrupted run.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import FAST, fast_config
from prism.atomic import host_tag
from prism.cli.train import main as train_main
from prism.config import config_to_yaml
from prism.engine.checkpoint import load_checkpoint
from prism.engine.run_lock import LOCK_NAME
from prism.engine.trainer import CHECKPOINT_NAME, Trainer

pytestmark = pytest.mark.slow  # every test here trains a model or spawns a process

STEPS = 40
OVERRIDES = [*FAST, f"train.steps={STEPS}", "train.checkpoint_every=1000", "train.log_every=1",
             "train.loggers=[csv]"]


def _start(cache: Path, run: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "prism.cli.train", "--data", str(cache), "-o", str(run),
                             "--no-eval", *OVERRIDES, *extra], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)


def _logged_step(run: Path) -> int:
    try:
        with open(run / "train_log.csv", newline="") as fh:
            rows = list(csv.DictReader(fh))
    except (OSError, KeyError):
        return 0
    return int(rows[-1]["step"]) if rows else 0


def _wait_for_step(proc: subprocess.Popen, run: Path, step: int, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None and _logged_step(run) < step:
        time.sleep(0.01)
    assert proc.poll() is None, f"training ended before step {step}: {proc.stderr.read()}"


def _straight_params(cache: Path, run: Path) -> list[torch.Tensor]:
    cfg = fast_config(f"train.steps={STEPS}", "train.checkpoint_every=1000", "train.log_every=1",
                      "train.loggers=[csv]", cache=cache)
    trainer = Trainer(cfg, run, cache_path=cache)
    trainer.fit()
    trainer.close()
    return [p.detach().clone() for p in trainer.ctx.model.state_dict().values()]


@pytest.fixture(scope="module")
def straight(tmp_path_factory, tiny_cache):
    return _straight_params(tiny_cache, tmp_path_factory.mktemp("straight") / "run")


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGUSR1, 143), (signal.SIGINT, 130)])
def test_signal_checkpoints_names_resume_and_resumes_exactly(tiny_cache, tmp_path, straight, capsys, sig, code):
    run = tmp_path / "run"
    proc = _start(tiny_cache, run)
    try:
        _wait_for_step(proc, run, 2)
        proc.send_signal(signal.SIGSTOP)  # frozen mid-run: it cannot finish before the signal is seen
        seen = _logged_step(run)
        proc.send_signal(sig)
        proc.send_signal(signal.SIGCONT)
        err = proc.communicate(timeout=120)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == code
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    state = load_checkpoint(run / CHECKPOINT_NAME)
    step = state["step"]
    assert seen <= step < STEPS
    assert f"stopped by {sig.name} at step {step}/{STEPS}" in lines[0]
    assert f"prism-train --resume {run.resolve()}" in lines[0]
    assert not [p for p in run.iterdir() if ".tmp-" in p.name]
    assert _logged_step(run) == step  # the log and the checkpoint agree
    assert train_main(["--resume", str(run), "--no-eval"]) == 0  # the printed command, in-process
    resumed = load_checkpoint(run / CHECKPOINT_NAME)
    assert resumed["step"] == STEPS
    for a, b in zip(straight, resumed["model"].values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_resume_of_a_run_stopped_before_its_first_checkpoint_starts_at_step_0(tiny_cache, tmp_path, straight):
    run = tmp_path / "early"
    run.mkdir()
    cfg = fast_config(f"train.steps={STEPS}", "train.checkpoint_every=1000", "train.log_every=1",
                      "train.loggers=[csv]", cache=tiny_cache)
    (run / "config.yaml").write_text(config_to_yaml(cfg))  # what a run killed during its first steps leaves
    assert train_main(["--resume", str(run), "--no-eval"]) == 0
    state = load_checkpoint(run / CHECKPOINT_NAME)
    assert state["step"] == STEPS
    for a, b in zip(straight, state["model"].values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_second_writer_is_refused_in_one_line_and_changes_nothing(tiny_cache, tmp_path, capsys):
    run = tmp_path / "run"
    proc = _start(tiny_cache, run, "train.steps=100000")
    try:
        _wait_for_step(proc, run, 1)
        holder = json.loads((run / LOCK_NAME).read_text())
        assert holder["pid"] == proc.pid
        before = {p.name: p.stat().st_mtime_ns for p in run.iterdir() if p.name != "train_log.csv"}
        code = train_main(["--data", str(tiny_cache), "-o", str(run), "--no-eval", *OVERRIDES])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1
        assert f"pid {proc.pid}" in err[0] and str(run) in err[0] and "another prism-train" in err[0]
        after = {p.name: p.stat().st_mtime_ns for p in run.iterdir() if p.name != "train_log.csv"}
        assert after == before
        assert proc.poll() is None  # the first writer is still running
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 143
    with open(run / "train_log.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["step"]) for r in rows] == list(range(1, len(rows) + 1))  # one header, one writer


def test_lock_of_a_dead_trainer_is_taken_over_and_stale_temporaries_removed(tiny_cache, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (run / LOCK_NAME).write_text(json.dumps({"pid": dead.pid, "host": "here", "started": 0}))
    stale = run / f".{CHECKPOINT_NAME}.tmp-{host_tag()}-{dead.pid}-0a0b"
    live = run / f".{CHECKPOINT_NAME}.tmp-{host_tag()}-{os.getpid()}-0c0d"
    other_host = run / f".{CHECKPOINT_NAME}.tmp-00000000-{dead.pid}-0e0f"
    for p in (stale, live, other_host):
        p.write_bytes(b"partial")
    trainer = Trainer(fast_config("train.steps=1", cache=tiny_cache), run, cache_path=tiny_cache)
    assert json.loads((run / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert not stale.exists() and live.exists() and other_host.exists()
    trainer.close()
    assert (run / LOCK_NAME).read_text() == ""  # released


def test_signal_during_the_evaluation_stops_it_with_training_complete(tiny_cache, tmp_path):
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "prism.cli.train", "--data", str(tiny_cache), "-o", str(run),
                             *FAST, "train.steps=2", "train.loggers=[csv]", "eval.window=[16,16,16]",
                             "eval.overlap=0.8", "eval.hd95=false"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    try:
        deadline = time.time() + 180
        while time.time() < deadline and proc.poll() is None:
            ckpt = run / CHECKPOINT_NAME
            if ckpt.exists() and load_checkpoint(ckpt)["step"] == 2:
                break
            time.sleep(0.01)
        proc.send_signal(signal.SIGSTOP)
        proc.send_signal(signal.SIGTERM)
        proc.send_signal(signal.SIGCONT)
        err = proc.communicate(timeout=180)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    lines = err.strip().splitlines()
    assert proc.returncode == 143, err[-2000:]
    assert len(lines) == 1 and "stopped by SIGTERM during the evaluation; training is complete (2 steps" in lines[0]
    assert f"prism-eval {run.resolve()}" in lines[0]
    assert not (run / "eval.json").exists()


def _rank_of(pid: int) -> int | None:
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    ranks = [int(e.split(b"=", 1)[1]) for e in env if e.startswith(b"RANK=")]
    return ranks[0] if ranks else None


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


def test_a_signal_to_one_rank_stops_every_rank_at_the_same_step(tiny_cache, tmp_path):
    run = tmp_path / "run"
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    proc = subprocess.Popen([*launcher, "-m", "prism.cli.train", "--data", str(tiny_cache), "-o", str(run),
                             "--no-eval", *OVERRIDES, "train.steps=100000", "optim.name=sgd"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_step(proc, run, 2)
        workers = {_rank_of(p): p for p in _children(proc.pid)}
        assert set(workers) >= {0, 1}, workers
        os.kill(workers[1], signal.SIGTERM)  # only rank 1 hears it (as when one node is preempted)
        err = proc.communicate(timeout=180)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    step = load_checkpoint(run / CHECKPOINT_NAME)["step"]
    assert step >= 2 and _logged_step(run) == step  # rank 0 stopped at rank 1's step and wrote the checkpoint
    assert f"stopped by SIGTERM at step {step}/100000" in err and f"prism-train --resume {run.resolve()}" in err


def test_a_signal_while_the_run_is_built_stops_before_the_first_step(tiny_cache, tmp_path, capsys, monkeypatch):
    from prism.engine import trainer as trainer_module

    built = trainer_module.Trainer.__init__

    def build_then_get_signalled(self, *args, **kwargs):
        built(self, *args, **kwargs)
        os.kill(os.getpid(), signal.SIGTERM)  # as if SLURM preempted the job during start-up

    monkeypatch.setattr(trainer_module.Trainer, "__init__", build_then_get_signalled)
    run = tmp_path / "run"
    assert train_main(["--data", str(tiny_cache), "-o", str(run), "--no-eval", *OVERRIDES]) == 143
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"stopped by SIGTERM at step 0/{STEPS}" in err[0]
    assert load_checkpoint(run / CHECKPOINT_NAME)["step"] == 0 and (run / "config.yaml").is_file()


def test_a_second_ctrl_c_during_a_checkpoint_write_waits_for_it(tiny_cache, tmp_path, capsys, monkeypatch):
    from prism.engine import trainer as trainer_module

    written = trainer_module.save_checkpoint
    calls = []

    def interrupted_twice(path, state):
        if not calls:  # the first checkpoint: Ctrl-C, and Ctrl-C again while it is being written
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
        calls.append(state["step"])
        return written(path, state)

    monkeypatch.setattr(trainer_module, "save_checkpoint", interrupted_twice)
    run = tmp_path / "run"
    code = train_main(["--data", str(tiny_cache), "-o", str(run), "--no-eval", *OVERRIDES, "train.checkpoint_every=2"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 130 and len(err) == 1
    assert "stopped by SIGINT at step 2/" in err[0]
    assert calls == [2] and load_checkpoint(run / CHECKPOINT_NAME)["step"] == 2  # written whole, once
    assert not [p for p in run.iterdir() if ".tmp-" in p.name]


def test_a_second_ctrl_c_outside_a_write_stops_at_once():
    from prism.engine.signals import StopSignals

    with StopSignals() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        with stop.protect():
            os.kill(os.getpid(), signal.SIGINT)  # counted, not raised
        assert stop.received == signal.SIGINT and stop.deferred == 1
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
