#!/usr/bin/env bash
# Tutorial: inference and deployment at a tiny size: test-time mirroring, an ensemble of runs, class
# probabilities, and an exported model. Run from the repository root: bash tutorials/deploy.sh
set -euo pipefail
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$work"

# --8<-- [start:setup]
# Raw BraTS-layout folders (synthetic here), their cache, and two runs (e.g. two folds or two seeds).
prism-data synth --nifti -o raw --cases 6 --shape 16 16 16
prism-data preprocess raw -o brats.h5 --workers 2 --min-size 16
for seed in 0 1; do
    prism-train --data brats.h5 -o "run$seed" --no-eval train.seed=$seed \
        train.steps=2 data.patch_size=[16,16,16] data.num_workers=0 model.options.width=4
done
mkdir new_cases && cp -r raw/BraTS20_Training_006 new_cases/
rm new_cases/BraTS20_Training_006/*_seg.nii.gz new_cases/BraTS20_Training_006/*_t1ce.nii.gz   # T1ce missing
# --8<-- [end:setup]

# --8<-- [start:tta]
prism-eval run0 --tta mirror -o run0/mirrored --no-hd95     # the report with test-time mirroring, beside the plain one
prism-predict run0 new_cases -o predictions --tta mirror
# --8<-- [end:tta]

# --8<-- [start:ensemble]
prism-predict run0 run1 new_cases -o ensemble_predictions      # mean probabilities of the two runs
prism-eval --ensemble run0 run1 -o ensemble --no-hd95            # the ensemble's 15-combination report
# --8<-- [end:ensemble]

# --8<-- [start:probabilities]
prism-predict run0 run1 new_cases -o ensemble_predictions --save-probabilities
python - <<'PY'
import nibabel as nib
import numpy as np

saved = np.load("ensemble_predictions/BraTS20_Training_006.npz")
probs, labels = saved["probabilities"], saved["labels"]       # [K, X, Y, Z] float32; raw label per class
label_map = np.asarray(nib.load("ensemble_predictions/BraTS20_Training_006.nii.gz").dataobj)
assert (labels[probs.argmax(0)] == label_map).all()
print(probs.shape, labels.tolist(), saved["modalities"].tolist())
PY
# --8<-- [end:probabilities]

# --8<-- [start:export]
prism-export run0 --format torch-export --modalities FLAIR T1 T2 -o flair_t1_t2.pt2
python - <<'PY'
import json

import torch

card = json.load(open("flair_t1_t2.pt2.json"))
print(card["inputs"]["modalities"], card["parity"]["max_abs_diff"], "<=", card["parity"]["tolerance"])
model = torch.export.load("flair_t1_t2.pt2").module()
logits = model(torch.randn(1, 3, 16, 16, 16))   # [B, 3 modalities, D, H, W] -> [B, K, D, H, W]
print(tuple(logits.shape))
PY
# --8<-- [end:export]

# --8<-- [start:onnx]
if python -c "import onnxruntime, onnxscript" 2>/dev/null; then   # pip install 'prism-seg[export]'
    prism-export run0 --format onnx -o model.onnx
    python - <<'PY'
import numpy as np
import onnxruntime as ort

runtime = ort.InferenceSession("model.onnx", providers=["CPUExecutionProvider"])
logits = runtime.run(["logits"], {"image": np.zeros((2, 4, 16, 16, 16), np.float32)})[0]
print(logits.shape)
PY
fi
# --8<-- [end:onnx]
test -f run0/mirrored/eval.json && test -f ensemble/eval.json && test -f predictions/BraTS20_Training_006.nii.gz
echo "deploy: ok"
