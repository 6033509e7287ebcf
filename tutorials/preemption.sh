#!/usr/bin/env bash
# Tutorial: a run stopped by SIGTERM (what SLURM, Kubernetes and `timeout` send) writes its checkpoint and exits
# 143; --resume continues it exactly. Run from the repository root: bash tutorials/preemption.sh
set -euo pipefail
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$work"
prism-data synth -o tiny.h5 --cases 4 --shape 16 16 16

# --8<-- [start:stop]
prism-train --data tiny.h5 -o run --no-eval train.steps=400 data.patch_size=[16,16,16] model.options.width=4 &
pid=$!
until [ -f run/config.yaml ]; do sleep 0.2; done; sleep 2     # training has started
kill -TERM "$pid" 2>/dev/null || true                        # the scheduler's signal (unless it already ended)
status=0; wait "$pid" || status=$?
echo "exit status $status"                                   # 143: stopped, checkpoint written, resumable
# prism-train: stopped by SIGTERM at step N/400; checkpoint run/last.pt written; resume with: prism-train --resume ...
# --8<-- [end:stop]
test "$status" -eq 143 -o "$status" -eq 0                   # 0 only if it finished before the signal came
test -f run/last.pt

# --8<-- [start:resume]
prism-train --resume run --no-eval                           # continues at step N, bit for bit
# --8<-- [end:resume]
python -c "import torch; step = torch.load('run/last.pt', weights_only=False)['step']; assert step == 400, step"
echo "preemption: ok"
