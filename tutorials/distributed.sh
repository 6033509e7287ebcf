#!/usr/bin/env bash
# Tutorial: the same run on 2 processes with torchrun (CPU and gloo here; on GPUs each process takes one GPU and
# NCCL). Run from the repository root: bash tutorials/distributed.sh
set -euo pipefail
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$work"
prism-data synth -o tiny.h5 --cases 4 --shape 16 16 16

# --8<-- [start:torchrun]
# data.batch_size is the global batch: split over the processes (it must divide evenly).
OMP_NUM_THREADS=1 torchrun --standalone --nproc_per_node=2 -m prism.cli.train \
    --data tiny.h5 -o run --no-eval train.steps=2 data.batch_size=2 data.patch_size=[16,16,16] \
    model.options.width=4
# --8<-- [end:torchrun]
test -f run/last.pt
echo "distributed: ok"
