"""On a real one-node Slurm cluster (tests/slurm_cluster.py; ``pytest -m slurm``, skipped where Slurm is not
installed): the cluster tutorials run as the docs show them (a self-requeuing job preempted twice and equal to
an uninterrupted run; two torchrun agents warned, requeued and equal to one process; a study through submitit
with the local study's numbers), and a study follows its jobs: a job warned by submitit's signal checkpoints,
requeues itself and resumes bit for bit; queued and running with their ids, a killed job's log named in one line,
a rerun waiting for a job still running instead of submitting it again.

``PRISM_TEST_SLURM_CONF=/path/slurm.conf`` uses a cluster already running (CI starts one in ``.ci/slurm``).
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
import yaml
from slurm_cluster import PARTITION, SlurmCluster, missing_programs

pytestmark = pytest.mark.slurm
ROOT = Path(__file__).resolve().parents[1]
CPU_NODE = "--gres=none --cpus-per-task=1 --time=10"  # the tutorials' scripts ask for GPUs; this node has none


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """``os.environ`` for a running cluster: the one named by PRISM_TEST_SLURM_CONF, or one started here (and
    stopped again, also when a test fails)."""
    external = os.environ.get("PRISM_TEST_SLURM_CONF")
    if external:
        yield {**os.environ, "SLURM_CONF": external, "PATH": os.environ["PATH"] + ":/usr/sbin:/sbin"}
        return
    missing = missing_programs()
    if missing:
        pytest.skip(f"Slurm is not installed (missing {', '.join(missing)}): apt-get install slurm-wlm munge")
    if os.geteuid() != 0:
        pytest.skip("the test cluster runs slurmd, which needs root")

    def interrupted(signum, frame):  # SIGTERM (a CI timeout) ends pytest through its teardown: daemons stop
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupted)
    try:
        with SlurmCluster(tmp_path_factory.mktemp("slurm")) as running:
            yield running.env
    finally:
        signal.signal(signal.SIGTERM, previous)


def _tutorial(name: str, env: dict, cwd: Path, **extra: str) -> str:
    done = subprocess.run(["bash", str(ROOT / "tutorials" / "slurm" / name)], cwd=cwd, env={**env, **extra},
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    return done.stdout


def test_a_job_warned_then_requeued_resumes_twice_and_equals_an_uninterrupted_run(cluster, tmp_path):
    out = _tutorial("requeue.sh", cluster, tmp_path, SBATCH_EXTRA=f"{CPU_NODE} --partition={PARTITION}",
                    RELEASE="1")
    assert "stopped by SIGUSR1 at step" in out and "stopped by SIGTERM at step" in out
    assert "equal to the uninterrupted run's" in out and out.rstrip().endswith("requeue: ok")


def test_two_torchrun_agents_under_srun_are_warned_requeued_and_equal_one_process(cluster, tmp_path):
    out = _tutorial("multinode.sh", cluster, tmp_path, RELEASE="1",
                    SBATCH_EXTRA=f"{CPU_NODE} --nodes=1 --ntasks-per-node=2 --partition={PARTITION}")
    assert "stopped by SIGUSR1 at step" in out and "agents that passed SIGUSR1 on to their rank: 2" in out
    assert "an uninterrupted 2-process run bit for bit" in out and out.rstrip().endswith("multinode: ok")


def test_a_study_through_submitit_has_the_local_studys_numbers_and_a_rerun_submits_nothing(cluster, tmp_path):
    out = _tutorial("study.sh", cluster, tmp_path, PARTITION=PARTITION)
    assert out.count(" submitted") == 4 and "4 finished" in out
    assert "the same numbers" in out and out.rstrip().endswith("slurm study: ok")


# ---- following jobs ------------------------------------------------------------------------------------------
def _spec(tmp_path: Path, steps: int = 100000, seeds: tuple[int, ...] = (0, 1)) -> Path:
    spec = {"name": "long", "data": {"synthetic": {"cases": 6, "shape": [16, 16, 16], "seed": 3}},
            "overrides": ["model.options.width=4", "data.patch_size=[16,16,16]", f"train.steps={steps}",
                          "train.log_every=1", "train.checkpoint_every=1000000", "train.threads=1",
                          "train.loggers=[csv]", "eval.hd95=false"],
            "arms": {"only": None}, "seeds": list(seeds)}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _logged_steps(run: Path) -> list[int]:
    try:
        with open(run / "train_log.csv", newline="") as fh:
            return [int(row["step"]) for row in csv.DictReader(fh)]
    except (OSError, KeyError, ValueError):
        return []


def _logged_step(run: Path) -> int:
    steps = _logged_steps(run)
    return steps[-1] if steps else 0


def _states(job: str, env: dict) -> str:
    done = subprocess.run(["squeue", "--noheader", "--states=all", f"--jobs={job}", "--format=%T"], env=env,
                          capture_output=True, text=True, timeout=60)
    return done.stdout.strip()


def _status(study: Path, env: dict) -> dict[str, dict]:
    done = subprocess.run([sys.executable, "-m", "prism.cli.study", "status", str(study), "--json"], env=env,
                          capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        return {}
    return {f"{r['arm']}/seed-{r['seed']}": r for r in json.loads(done.stdout)}


def _wait(what: str, check, timeout: float = 300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.5)
    raise AssertionError(f"gave up waiting for {what}")


def _job_process(job_id: str) -> int | None:
    """The pid of the job's Python process (the one submitit runs the study's function in)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            env = (entry / "environ").read_bytes().split(b"\0")
            cmd = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if f"SLURM_JOB_ID={job_id}".encode() in env and b"submitit.core._submit" in cmd:
            return int(entry.name)
    return None


def test_a_study_job_warned_by_submitits_signal_checkpoints_requeues_itself_and_resumes(cluster, tmp_path):
    from prism.study.runner import run_study
    from prism.study.spec import load_spec

    spec = _spec(tmp_path, steps=40, seeds=(0,))
    study = tmp_path / "study"
    cmd = [sys.executable, "-m", "prism.cli.study", "run", str(spec), "-o", str(study), "--executor", "submitit",
           "--slurm-partition", PARTITION, "--slurm-gpus", "0", "--slurm-cpus", "1", "--slurm-time", "10"]
    proc = subprocess.Popen(cmd, env=cluster, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run = study / "runs/only/seed-0"
    try:
        _wait("training to start", lambda: _logged_step(run) >= 3)
        job = json.loads((run / "job.json").read_text())["job_id"]
        # submitit's warning before the time limit (--signal=USR2@90 in its job scripts)
        subprocess.run(["scancel", "--signal=USR2", job], env=cluster, check=True, timeout=60)
        _wait("the job to requeue itself", lambda: _states(job, cluster) == "PENDING")
        stopped_at = torch.load(run / "last.pt", map_location="cpu", weights_only=True)["step"]
        subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now+5"], env=cluster, check=True,
                       timeout=60)  # Slurm would hold it for about two minutes
        out, err = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err[-3000:]
    assert "[1/1 done, 0 left] only/seed-0 finished" in out and out.count("submitted") == 1
    log = Path(json.loads((run / "job.json").read_text())["stderr"]).read_text()
    assert f"stopped by SIGUSR2 at step {stopped_at}/40; requeue job {job}\n" in log
    assert f"requeue job {job} failed" not in log
    assert _logged_steps(run) == list(range(1, 41))  # resumed where it stopped: no step twice
    local = tmp_path / "local"
    run_study(load_spec(spec), local, log=lambda _: None)
    a, b = (torch.load(d / "runs/only/seed-0/last.pt", map_location="cpu", weights_only=True) for d in (study, local))
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_a_study_shows_queued_and_running_jobs_names_a_killed_jobs_log_and_a_rerun_waits_for_its_job(
        cluster, tmp_path):
    spec, study = _spec(tmp_path), tmp_path / "study"
    # 2 CPUs per run on a 2-CPU node: one job runs, the other waits in the queue
    cmd = [sys.executable, "-m", "prism.cli.study", "run", str(spec), "-o", str(study), "--executor", "submitit",
           "--slurm-partition", PARTITION, "--slurm-gpus", "0", "--slurm-cpus", "2", "--slurm-time", "10"]
    first = subprocess.Popen(cmd, env=cluster, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    rerun = None
    try:
        rows = _wait("one run running and one queued", lambda: (lambda r: r if sorted(
            x["state"] for x in r.values()) == ["queued", "running"] else None)(_status(study, cluster)))
        running = next(r for r in rows.values() if r["state"] == "running")
        queued = next(r for r in rows.values() if r["state"] == "queued")
        assert running["job"] and queued["job"] and running["job"] != queued["job"]
        assert running["log"].endswith(f"{running['job']}_0_log.err")
        name = f"{running['arm']}/seed-{running['seed']}"
        pid = _wait("the running job's process", lambda: _job_process(running["job"]))
        os.kill(pid, signal.SIGKILL)  # as the kernel does when a job runs out of memory
        _wait("the killed job to be reported", lambda: _status(study, cluster).get(name, {}).get("state")
              == "failed")
        other = f"{queued['arm']}/seed-{queued['seed']}"
        _wait("the queued job to run", lambda: _status(study, cluster).get(other, {}).get("state") == "running")
        first.send_signal(signal.SIGTERM)  # the study stops following; its job goes on
        out, err = first.communicate(timeout=120)
        assert first.returncode == 143, err[-3000:]
        assert f"{name} FAILED (job {running['job']} ended FAILED without a result; its log: " in out
        assert f"Slurm job(s) {queued['job']} still queued or running" in err and len(err.strip().splitlines()) == 1
        assert f"{queued['job']} queued" in out or f"{queued['job']} running" in out

        rerun = subprocess.Popen(cmd, env=cluster, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert rerun.stdout is not None
        seen = ""
        for line in rerun.stdout:  # the rerun waits for the running job and submits the failed run again
            seen += line
            if "waiting for it" in seen and f"{name}: job " in seen:
                break
        assert f"{other}: job {queued['job']} still queued or running: waiting for it" in seen
        assert f"{name}: job " in seen and f"{other}: job {queued['job']} submitted" not in seen
        rerun.send_signal(signal.SIGTERM)
        rerun.communicate(timeout=120)
        assert rerun.returncode == 143
    finally:
        for proc in (first, rerun):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.communicate()
        subprocess.run(["scancel", f"--partition={PARTITION}"], env=cluster, capture_output=True, timeout=60)
