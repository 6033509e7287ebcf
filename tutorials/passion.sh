#!/usr/bin/env bash
# Tutorial: PASSION's own training objective (the preset passion_brats2020_mr2468), then one difference switched
# back to the seeds' definition. Tiny sizes; run from the repository root: bash tutorials/passion.sh
set -euo pipefail
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$work"
prism-data synth -o tiny.h5 --cases 4 --shape 16 16 16     # on BraTS: the cache of the BraTS guide

# --8<-- [start:train]
prism-train --preset passion_brats2020_mr2468 --data tiny.h5 -o passion --no-eval \
    train.steps=2 data.patch_size=[16,16,16] data.num_workers=0 model.options.width=4
# --8<-- [end:train]
grep -q "loss" passion/train_log.csv
# each piece of the objective and its share of the loss are logged (share.fuse, share.pixel_kl, ...)
head -1 passion/train_log.csv | tr ',' '\n' | grep -q "^share.pixel_kl$"

# --8<-- [start:switch]
# The same objective with PASSION's loss weighting replaced by the seeds' (every other difference kept):
#   prism-train --preset passion_brats2020_mr2468 --data brats2020_mr2468.h5 losses.0.options.weighting=seeds
python - <<'PY'
from prism.config import build_config
from prism.modalities import BRATS_MODALITIES
from prism.presets import load_preset
from prism.registry import create_loss

# prism-train counts missing_rates: from_split on the cache's training split; a term built by hand takes the
# rates themselves (here those of PASSION's mr2468 training split: 1 - 90/219, 1 - 135/219, 1 - 184/219, 1 - 43/219)
config = build_config(load_preset("passion_brats2020_mr2468"), [
    "losses.0.options.weighting=seeds",
    "losses.0.options.missing_rates={flair: 0.589, t1ce: 0.384, t1: 0.160, t2: 0.804}"])
term = config.losses[0]
create_loss(term.name, BRATS_MODALITIES, 4, **term.options)   # the term accepts the switched option
print(term.name, {k: term.options[k] for k in ("weighting", "gate", "pixel_kl_variant", "proto_variant")})
PY
# --8<-- [end:switch]
echo "passion: ok"
