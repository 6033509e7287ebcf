#!/usr/bin/env bash
# Tutorial: meta-train with MAML on site tasks, then adapt to one site in a few steps and compare before/after.
# Tiny sizes; run from the repository root: bash tutorials/adaptation.sh
set -euo pipefail
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$work"

# --8<-- [start:data]
prism-data synth -o sites.h5 --cases 12 --shape 16 16 16 --sites 2 --test-fraction 0.34   # site0, site1
# --8<-- [end:data]

# --8<-- [start:train]
prism-train --preset maml --data sites.h5 -o maml --no-eval \
    strategy.options.tasks=site strategy.options.inner_steps=1 \
    train.steps=2 data.patch_size=[16,16,16] model.options.width=4
# --8<-- [end:train]

# --8<-- [start:adapt]
# Evaluate site1's test cases before and after K=2 fine-tuning steps on N=1 of them (support), scored on the rest.
prism-eval maml --adapt-site site1 --adapt-cases 1 --adapt-steps 2 --adapt-lr 0.01 --no-hd95 --no-heatmap
# --8<-- [end:adapt]
python - <<'PY'
import json
report = json.load(open("maml/eval.json"))
assert "adaptation" in json.dumps(report), sorted(report)
PY
echo "adaptation: ok"
