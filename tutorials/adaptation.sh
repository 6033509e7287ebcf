#!/usr/bin/env bash
# Tutorial: meta-train with MAML on site tasks, then measure how fast the model adapts to a site it never saw.
# Tiny sizes; run from the repository root: bash tutorials/adaptation.sh
set -euo pipefail
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$work"

# --8<-- [start:data]
# Three acquisition sites; site2's cases form the split 'heldout' and never enter train/val/test.
prism-data synth -o sites.h5 --cases 15 --shape 16 16 16 --sites 3 --hold-out-site site2
prism-data info sites.h5 | grep -E "splits|sites"
# --8<-- [end:data]

# --8<-- [start:train]
# MAML with one site per task: support and query batches come from disjoint cases of that site.
prism-train --preset maml --data sites.h5 -o maml --no-eval \
    strategy.options.tasks=site strategy.options.inner_steps=1 \
    train.steps=2 data.patch_size=[16,16,16] model.options.width=4
# --8<-- [end:train]

# --8<-- [start:curve]
# Dice after K = 0 and 2 steps on N = 1 support case of site2, scored on the other site2 cases,
# mean and sd over R = 2 draws of the support case. Writes maml/adapt.json, adapt.md, adapt.png.
prism-eval adapt maml --site site2 --steps 0,2 --support 1 --draws 2 --lr 0.01
cat maml/adapt.md
# --8<-- [end:curve]

python - <<'PY'
import json
curve = json.load(open("maml/adapt.json"))
assert curve, "empty adapt.json"
assert not __import__("os").path.exists("maml/eval.json")  # the curve leaves eval.json alone
PY
echo "adaptation: ok"
