#!/usr/bin/env bash
# Tutorial: one run over two torchrun agents ("nodes") started by srun, meeting at a c10d rendezvous; warned
# before its time limit, every rank stops at the same step, rank 0 writes the checkpoint, the job requeues itself
# and resumes; the result equals an uninterrupted 2-process run bit for bit, and one process with the same global
# batch within float rounding. Needs a Slurm cluster (CI starts a
# one-node one: tests/slurm_cluster.py). Run from the repository root: bash tutorials/slurm/multinode.sh
#   SBATCH_EXTRA  options added to sbatch (CI: "--nodes=1 --ntasks-per-node=2 --gres=none --cpus-per-task=1
#                 --time=10": both agents on its one node, no GPU)
#   RELEASE=1     make the requeued job eligible after 5 s (Slurm holds it for about two minutes; needs an admin;
#                 at once would be too early: the node refuses a relaunch in the second of the requeue)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
work="$(mktemp -d "$PWD/multinode-XXXXXX")"   # the job reads and writes here: a folder every node sees
trap 'if [ -n "${job:-}" ]; then scancel "$job" 2>/dev/null || true; fi; rm -rf "$work"' EXIT
cd "$work"
read -r -a extra <<< "${SBATCH_EXTRA:-}"
prism-data synth -o tiny.h5 --cases 6 --shape 16 16 16 > /dev/null
# SGD: Adam would amplify float rounding in near-zero gradients into lr-sized steps
args=(--data tiny.h5 --no-eval train.steps=20 train.log_every=1 train.checkpoint_every=1000 train.threads=1
      data.batch_size=2 data.patch_size=[16,16,16] model.options.width=4 optim.name=sgd)
prism-train -o one "${args[@]}" > /dev/null       # the references: one process, the same global batch ...
OMP_NUM_THREADS=1 torchrun --standalone --nproc_per_node=2 -m prism.cli.train -o two "${args[@]}" > /dev/null 2>&1
                                                  # ... and two processes on one machine, never stopped

step_of() { tail -n 1 run/train_log.csv 2>/dev/null | cut -d, -f1; }
state_of() { squeue --noheader --states=all --jobs="$1" --format=%T 2>/dev/null || true; }
wait_until() {  # wait_until DESCRIPTION COMMAND...: poll for up to 5 minutes
    local what="$1"; shift
    for _ in $(seq 1500); do "$@" && return 0; sleep 0.2; done
    echo "gave up waiting for $what"; cat prism-*.out 2>/dev/null; exit 1
}
past_step() { [ "$(step_of)" -ge "$1" ] 2>/dev/null; }
in_state() { [ "$(state_of "$job")" = "$1" ]; }

# --8<-- [start:submit]
job=$(PROCS_PER_AGENT=1 sbatch --parsable "${extra[@]}" "$here/torchrun.sbatch" run "${args[@]}")
# --8<-- [end:submit]
wait_until "training to start" past_step 3

# --8<-- [start:warn]
scancel --batch --signal=USR1 "$job"   # what --signal=B:USR1@120 sends to the job script before the time limit
# --8<-- [end:warn]
wait_until "job $job to be requeued" in_state PENDING
if [ "${RELEASE:-0}" = 1 ]; then scontrol update JobId="$job" StartTime=now+5; fi
wait_until "job $job to complete" in_state COMPLETED

grep -E 'stopped by SIGUSR1 at step' prism-"$job".out
agents=$(grep -cE 'Received (10|Signals.SIGUSR1|SIGUSR1) death signal' prism-"$job".out)
echo "agents that passed SIGUSR1 on to their rank: $agents"
test "$agents" -eq 2
python - <<'PY'
import csv

import torch

def same(a, b):
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b

one, two, cut = (torch.load(f"{d}/last.pt", weights_only=True) for d in ("one", "two", "run"))
assert one["step"] == two["step"] == cut["step"] == 20, (one["step"], two["step"], cut["step"])
for part in ("model", "optimizer", "scheduler", "rng", "data"):  # stopped, requeued, resumed: bit for bit
    assert same(cut[part], two[part]), part
for name, value in one["model"].items():  # the tolerance of the 2-process test (tests/test_distributed.py)
    torch.testing.assert_close(cut["model"][name], value, rtol=1e-4, atol=1e-5, msg=name)
steps = [int(row["step"]) for row in csv.DictReader(open("run/train_log.csv", newline=""))]
assert steps == list(range(1, 21)), steps   # rank 0 alone wrote the log: every step once
print("two agents, stopped and resumed: an uninterrupted 2-process run bit for bit, one process within rounding")
PY
echo "multinode: ok"
