#!/usr/bin/env bash
# Tutorial: meta-learning beyond MAML: meta-transfer learning from a trained run, a fast-weight generator, and
# few-shot class tasks. Tiny sizes; run from the repository root: bash tutorials/meta.sh
set -euo pipefail
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$work"
prism-data synth -o sites.h5 --cases 12 --shape 16 16 16 --sites 3 --hold-out-site site2
tiny=(train.steps=2 data.patch_size=[16,16,16] model.options.width=4 --no-eval)

# --8<-- [start:transfer]
# 1. An ordinary run: the model to transfer from.
prism-train --data sites.h5 -o base "${tiny[@]}"
# 2. Meta-transfer: its weights frozen, per-channel scale and shift learned for every convolution (and the
#    head), episodically on site tasks.
prism-train --data sites.h5 -o transfer --init-from base --strategy meta_transfer \
    strategy.options.tasks=site "${tiny[@]}"
# 3. How fast it adapts to the held-out site: only scale, shift and head move.
prism-eval adapt transfer --site site2 --steps 0,2 --support 1 --draws 1
# --8<-- [end:transfer]

# --8<-- [start:generator]
# A fast-weight generator: adapting to a task is one forward pass of g_phi on its support set.
prism-train --data sites.h5 -o generator --strategy fast_weights \
    strategy.options.tasks=site strategy.options.hidden=16 "${tiny[@]}"
prism-eval adapt generator --site site2 --steps 0,1 --support 1 --draws 1
# --8<-- [end:generator]

# --8<-- [start:fewshot]
# Few-shot classes: each task is one class against the rest; class 3 (enhancing tumour) never appears in
# meta-training. Then few-shot Dice on it from 1 support case, against fine-tuning the ordinary run.
prism-train --data sites.h5 -o fewshot --preset maml strategy.options.tasks=class \
    'strategy.options.held_out_classes=[3]' "${tiny[@]}"
prism-eval fewshot fewshot --classes 3 --shots 1 --steps 2 --draws 1 --baseline base
# --8<-- [end:fewshot]
test -f transfer/adapt.json && test -f generator/adapt.json && test -f fewshot/fewshot.json
echo "meta: ok"
