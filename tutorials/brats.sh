#!/usr/bin/env bash
# Tutorial: BraTS from raw folders to a report, at a tiny size. Real data: replace the synthetic folder by
# BraTS2020_TrainingData and drop the size overrides. Run from the repository root: bash tutorials/brats.sh
set -euo pipefail
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$work"

# --8<-- [start:raw]
# Raw folders in the BraTS 2020 layout (<case>/<case>_{flair,t1ce,t1,t2,seg}.nii.gz); here synthetic ones.
prism-data synth --nifti -o raw --cases 6 --shape 16 16 16
ls raw/BraTS20_Training_001
# --8<-- [end:raw]

# --8<-- [start:csv]
# A PASSION split CSV: which modalities each training case has (mask in [FLAIR, T1ce, T1, T2] order,
# mask_id and pos_mask_ids in PASSION's combination order). PASSION ships them for BraTS 2018/2020.
python - <<'PY'
import csv, random
from prism.modalities import BRATS_MODALITIES, enumerate_combinations

combos = enumerate_combinations(BRATS_MODALITIES)
rng = random.Random(0)
with open("Brats2020_imb_split_mr2468.csv", "w", newline="") as fh:
    out = csv.writer(fh)
    out.writerow(["data_name", "mask_id", "mask", "pos_mask_ids"])
    for i in range(1, 7):
        mask = combos[rng.randrange(15)].mask
        ids = [c.index for c in combos if all(m or not cm for m, cm in zip(mask, c.mask))]
        mask_id = next(c.index for c in combos if c.mask == mask)
        out.writerow([f"HG_BraTS20_Training_{i:03d}", mask_id, str(list(mask)), str(ids)])
PY
head -3 Brats2020_imb_split_mr2468.csv
# --8<-- [end:csv]

# --8<-- [start:preprocess]
prism-data preprocess raw -o brats.h5 --workers 2 --min-size 16 \
    --availability-csv Brats2020_imb_split_mr2468.csv
prism-data verify brats.h5 --sources          # every chunk's checksum, and the sources unchanged
prism-data info brats.h5
# --8<-- [end:preprocess]

# --8<-- [start:train]
prism-train --preset brats2020_mr2468 --data brats.h5 -o run --no-eval \
    train.steps=2 data.patch_size=[16,16,16] data.num_workers=0 model.options.width=4
# --8<-- [end:train]

# --8<-- [start:eval]
prism-eval run --window 16 16 16 --et-postprocess 0     # writes run/eval.json, eval.md, eval_cases.csv
head -5 run/eval.md
# --8<-- [end:eval]

# --8<-- [start:predict]
mkdir new_cases && cp -r raw/BraTS20_Training_006 new_cases/
rm new_cases/BraTS20_Training_006/*_seg.nii.gz new_cases/BraTS20_Training_006/*_t1ce.nii.gz   # T1ce missing
prism-predict run new_cases -o predictions --window 16 16 16
ls predictions
# --8<-- [end:predict]
test -f run/eval.json
test -n "$(ls predictions)"
echo "brats: ok"
