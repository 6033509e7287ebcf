#!/usr/bin/env bash
# Tutorial: a Slurm job is warned before its time limit (SIGUSR1), writes its checkpoint, requeues itself and
# resumes; then it is requeued from outside (scontrol requeue: SIGTERM) and resumes again; the finished run equals
# an uninterrupted one bit for bit. Needs a Slurm cluster (CI starts a one-node one: tests/slurm_cluster.py).
# Run from the repository root: bash tutorials/slurm/requeue.sh
#   SBATCH_EXTRA  options added to sbatch (CI: "--gres=none --cpus-per-task=1 --time=10": no GPU, a short partition)
#   RELEASE=1     make a requeued job eligible after 5 s (Slurm holds it for about two minutes; needs an admin;
#                 at once would be too early: the node refuses a relaunch in the second of the requeue)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
work="$(mktemp -d "$PWD/requeue-XXXXXX")"     # the job reads and writes here: a folder every node sees
trap 'if [ -n "${job:-}" ]; then scancel "$job" 2>/dev/null || true; fi; rm -rf "$work"' EXIT
cd "$work"
read -r -a extra <<< "${SBATCH_EXTRA:-}"
prism-data synth -o tiny.h5 --cases 6 --shape 16 16 16 > /dev/null
args=(--data tiny.h5 train.steps=60 train.log_every=1 train.checkpoint_every=1000 train.threads=1
      data.patch_size=[16,16,16] model.options.width=4 eval.hd95=false)
prism-train -o straight --no-eval "${args[@]}" > /dev/null     # the reference: the same run, never stopped

step_of() { tail -n 1 run/train_log.csv 2>/dev/null | cut -d, -f1; }
state_of() { squeue --noheader --states=all --jobs="$1" --format=%T 2>/dev/null || true; }
wait_until() {  # wait_until DESCRIPTION COMMAND...: poll for up to 5 minutes
    local what="$1"; shift
    for _ in $(seq 1500); do "$@" && return 0; sleep 0.2; done
    echo "gave up waiting for $what"; cat prism-*.out 2>/dev/null; exit 1
}
past_step() { [ "$(step_of)" -ge "$1" ] 2>/dev/null; }
in_state() { [ "$(state_of "$job")" = "$1" ]; }
resume_now() {  # a requeued job waits (reason BeginTime); an admin can let it start at once
    wait_until "job $job to be requeued" in_state PENDING
    if [ "${RELEASE:-0}" = 1 ]; then scontrol update JobId="$job" StartTime=now+5; fi
}

# --8<-- [start:submit]
job=$(sbatch --parsable "${extra[@]}" "$here/train.sbatch" run "${args[@]}")
# --8<-- [end:submit]
wait_until "training to start" past_step 3

# --8<-- [start:warn]
scancel --signal=USR1 "$job"     # what --signal=USR1@120 sends 2 minutes before the time limit
# the run writes last.pt and exits 143; the job script requeues the job; the requeued job resumes the run
# --8<-- [end:warn]
resume_now
first=$(grep -o 'stopped by SIGUSR1 at step [0-9]*' prism-"$job".out | grep -o '[0-9]*$')
wait_until "the requeued job to train" past_step $((first + 3))

# --8<-- [start:requeue]
scontrol requeue "$job"          # an admin's requeue or a preemption: SIGTERM to every process of the job
# --8<-- [end:requeue]
resume_now
wait_until "job $job to complete" in_state COMPLETED

grep -E 'stopped by (SIGUSR1|SIGTERM) at step' prism-"$job".out
python - <<'PY'
import torch

def same(a, b):
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b

cut, straight = (torch.load(f"{d}/last.pt", weights_only=True) for d in ("run", "straight"))
assert cut["step"] == straight["step"] == 60, (cut["step"], straight["step"])
for part in ("model", "optimizer", "scheduler", "rng", "data"):
    assert same(cut[part], straight[part]), part
print("requeued twice, resumed twice: weights, optimizer, generators and data position equal to the uninterrupted run's")
PY
echo "requeue: ok"
