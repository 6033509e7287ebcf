#!/usr/bin/env bash
# Tutorial: your own package with a backbone, a loss term, a masking policy, a strategy and a logger, installed
# with pip, checked with prism's conformance kit, trained with prism-train and loaded back from Python.
# Run from the repository root: bash tutorials/plugin_package.sh
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# --8<-- [start:install]
cp -r "$here/plugin_package" "$work/prism-tiny"          # pyproject.toml + prism_tiny/ + tests/
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
for kind, name in [("backbone", "tiny"), ("loss", "uni_dice"), ("masking", "drop_one"), ("strategy", "accumulate"),
                   ("logger", "jsonl")]:
    entry = next(e for e in found[kind] if e["name"] == name)
    print(kind, name, entry["distribution"], entry["version"], "provides" if kind == "backbone" else "needs",
          entry["provides"] if kind == "backbone" else entry["needs"])
assert not found["failures"], found["failures"]'
# --8<-- [end:list]

# --8<-- [start:check]
# prism's own suites on the package's five plugins (prism.testing); every failed check is named at once
(cd "$work/prism-tiny" && python -m pytest -q -p no:cacheprovider tests)
# --8<-- [end:check]

# --8<-- [start:train]
prism-data synth -o "$work/tiny.h5" --cases 4 --shape 16 16 16
prism-train --data "$work/tiny.h5" -o "$work/run" --no-eval \
    model.name=tiny model.options.width=4 \
    'losses=[{name: fuse}, {name: uni_dice, weight: 0.5}]' \
    masking.train.name=drop_one \
    strategy.name=accumulate strategy.options.micro_batches=2 strategy.options.warmup=1 \
    'train.loggers=[csv, {name: jsonl, options: {filename: tiny.jsonl}}]' train.log_every=1 \
    train.steps=2 data.patch_size=[16,16,16] data.batch_size=1
# --8<-- [end:train]
test -f "$work/run/last.pt"
grep -q "uni_dice" "$work/run/train_log.csv"
grep -q '"group": "train"' "$work/run/tiny.jsonl"   # the package's logger wrote the rows

# --8<-- [start:load]
python - "$work/run" <<'PY'
import sys

import torch

from prism.adapt import adapted_copy
from prism.batch import Batch
from prism.data.cache_reader import CacheReader
from prism.adapt import adaptation_loss  # the loss prism-eval adapt hands to Strategy.adapt
from prism.runs import load_run

run = load_run(sys.argv[1])  # the run's backbone (eval mode) and strategy, with their checkpointed state
print(type(run.model).__name__, type(run.strategy).__name__, run.strategy.steps_done, run.modalities)

# A support batch from Python: a case of the run's cache (any [N, M, D, H, W] image and labels will do)
reader = CacheReader(run.cache)
case = reader.split(run.config.data.train_split)[0]
image, label = reader.read_case(case)  # float32 [M, D, H, W], uint8 [D, H, W]
available = torch.tensor(reader.info(case).availability)
reader.close()
crop = (slice(None), *[slice(0, 16)] * 3)  # sizes the backbone takes (multiples of run.model.size_divisor)
support = Batch(image=torch.from_numpy(image)[crop][None], label=torch.from_numpy(label)[crop[1:]][None].long(),
                mask=available[None], availability=available[None])

weights = run.strategy.adapt(run.model, [support], adaptation_loss, steps=2)  # {parameter name: adapted tensor}
adapted = adapted_copy(run.model, weights).eval()  # the run's model is left as it was
with torch.no_grad():
    print("adapted", len(weights), "tensors; prediction", tuple(adapted(support.image, support.mask).logits.shape))
PY
# --8<-- [end:load]
echo "plugin_package: ok"
