"""Tutorial: modalities, masks, the 15 combinations, Batch, SegOutput parts and the registry, in Python.

Run: python tutorials/concepts.py (a few seconds on a CPU). The docs page "Concepts" shows its sections.
"""

# Imports sit next to the code that uses them: each section is shown on its own in the docs.
# ruff: noqa: E402

import torch

# --8<-- [start:combinations]
from prism.modalities import BRATS_MODALITIES, combination_index, combination_masks, enumerate_combinations

print(BRATS_MODALITIES)                      # ('flair', 't1ce', 't1', 't2'): the channel order of the data
combos = enumerate_combinations(BRATS_MODALITIES)
for c in combos[:4] + combos[-1:]:
    print(c.index, c.name, c.mask)           # 0 T2 (False, False, False, True) ... 14 FLAIR+T1ce+T1+T2
masks = combination_masks(BRATS_MODALITIES)  # bool [15, 4], row c = combination c
print(combination_index(BRATS_MODALITIES, [True, True, False, False]))   # 9: FLAIR+T1ce
# --8<-- [end:combinations]
assert len(combos) == 15 and masks.shape == (15, 4)
assert combos[9].name == "FLAIR+T1ce" and combos[14].mask == (True, True, True, True)

# --8<-- [start:batch]
from prism.batch import Batch

image = torch.randn(2, 4, 16, 16, 16)                     # [B, M, D, H, W]
label = torch.randint(0, 4, (2, 16, 16, 16))              # [B, D, H, W], values 0..K-1
availability = torch.tensor([[True, True, True, True],    # what exists on disk for each case
                             [True, False, True, True]])  # case 2 has no T1ce
batch = Batch(image=image, label=label, mask=availability, availability=availability, case_ids=["a", "b"])
flair_t2 = torch.tensor([[True, False, False, True]] * 2)
masked = batch.with_mask(flair_t2)                        # the channels not in the mask become zeros
print(masked.image[:, 1].abs().max())                     # tensor(0.): T1ce zeroed
# --8<-- [end:batch]
assert masked.image[:, 1].abs().max() == 0 and masked.image[:, 0].equal(image[:, 0])

# --8<-- [start:backbone]
from prism.outputs import PARTS
from prism.registry import create_backbone, get_registry, list_plugins
from prism.seams import check_provides_needs

print(list_plugins("backbone"))                           # ['m2ftrans', 'mmformer', 'multi_unet', ...]
model = create_backbone("multi_unet", BRATS_MODALITIES, num_classes=4, width=4)
model.request_parts({"uni", "deep"})                      # what the losses will read (the engine does this)
out = model(masked.image, masked.mask)                    # train mode: the requested parts are filled in
for part in sorted(out.present()):
    value = getattr(out, part)
    shapes = [tuple(t.shape) for t in value] if isinstance(value, list) else tuple(value.shape)
    print(f"{part:8s} {shapes}   # {PARTS[part]}")
# deep     [(2, 4, 8, 8, 8), (2, 4, 4, 4, 4)]   coarser levels only (level 0 is logits), finest first
# logits   (2, 4, 16, 16, 16)                   the fused prediction
# uni      (2, 4, 4, 16, 16, 16)                each modality's own prediction [B, M, K, D, H, W]
# ... (multi_unet also returns features, uni_deep and uni_features)
entry = get_registry().get("loss", "prism")
check_provides_needs("multi_unet", model.provides, "prism", entry.needs)   # raises a one-line PluginError if not
# --8<-- [end:backbone]
assert out.logits.shape == (2, 4, 16, 16, 16) and out.uni.shape == (2, 4, 4, 16, 16, 16)
assert all(d.shape[-1] < 16 for d in out.deep)  # deep never holds the full-resolution level

# --8<-- [start:evaluate]
model.eval()
with torch.no_grad():
    every = model.combination_logits(image[:1], masks)    # [B, 15, K, D, H, W]: all combinations in one call
    one = model(image[:1] * masks[3, None, :, None, None, None], masks[3:4]).logits   # FLAIR only
print(torch.allclose(every[:, 3], one, atol=1e-5))        # True
# --8<-- [end:evaluate]
assert every.shape == (1, 15, 4, 16, 16, 16) and torch.allclose(every[:, 3], one, atol=1e-5)
print("concepts: ok")
