#!/usr/bin/env bash
# Tutorial: your own package with a backbone, a loss term, a masking policy and a strategy, installed with pip
# and trained with prism-train. Run from the repository root: bash tutorials/plugin_package.sh
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# --8<-- [start:install]
cp -r "$here/plugin_package" "$work/prism-tiny"          # pyproject.toml + prism_tiny/
# In your own environment: pip install -e prism-tiny. This tutorial installs into a throwaway folder put on
# PYTHONPATH, so that running it leaves your environment as it was (--no-deps: prism and torch are there).
isolation=$(python -c "import setuptools" 2>/dev/null && echo --no-build-isolation || true)
pip install -q --no-deps $isolation --target "$work/site" "$work/prism-tiny"
export PYTHONPATH="$work/site${PYTHONPATH:+:$PYTHONPATH}"
# --8<-- [end:install]

# --8<-- [start:list]
prism-plugins --json | python -c '
import json, sys
found = json.load(sys.stdin)
for kind, name in [("backbone", "tiny"), ("loss", "uni_dice"), ("masking", "drop_one"), ("strategy", "accumulate")]:
    entry = next(e for e in found[kind] if e["name"] == name)
    print(kind, name, entry["distribution"], entry["version"], "provides" if kind == "backbone" else "needs",
          entry["provides"] if kind == "backbone" else entry["needs"])
assert not found["failures"], found["failures"]'
# --8<-- [end:list]

# --8<-- [start:train]
prism-data synth -o "$work/tiny.h5" --cases 4 --shape 16 16 16
prism-train --data "$work/tiny.h5" -o "$work/run" --no-eval \
    model.name=tiny model.options.width=4 \
    'losses=[{name: fuse}, {name: uni_dice, weight: 0.5}]' \
    masking.train.name=drop_one \
    strategy.name=accumulate strategy.options.micro_batches=2 \
    train.steps=2 data.patch_size=[16,16,16] data.batch_size=1
# --8<-- [end:train]
test -f "$work/run/last.pt"
grep -q "uni_dice" "$work/run/train_log.csv"
echo "plugin_package: ok"
