"""Tutorial: prism's losses in your own training loop (no Trainer, no config, any backbone producing the parts).

Run: python tutorials/own_loop.py (a few seconds on a CPU).
"""

# Imports sit next to the code that uses them: each section is shown on its own in the docs.
# ruff: noqa: E402

import torch

from prism.modalities import BRATS_MODALITIES
from prism.registry import create_backbone

torch.manual_seed(0)

# --8<-- [start:data]
def toy_batch(b: int = 2, size: int = 16) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Your data loader: image [B, M, D, H, W], label [B, D, H, W], modality mask [B, M] (True = available)."""
    image = torch.randn(b, 4, size, size, size)
    label = (image[:, 0] > 0.8).long() + (image[:, 1] > 1.2).long() * 2        # classes 0..3
    mask = torch.rand(b, 4) < 0.6
    mask[~mask.any(1), 0] = True                                                # never an empty mask
    return image * mask[:, :, None, None, None], label, mask                     # zero what is missing
# --8<-- [end:data]

# --8<-- [start:loop]
from prism.plugins.losses import dice_ce_loss, pixel_kl_loss, prm_loss, proto_l2_loss, uni_loss

model = create_backbone("multi_unet", BRATS_MODALITIES, num_classes=4, width=4)   # or any nn.Module of yours
model.request_parts({"uni", "deep", "features", "uni_features"})
optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
for step in range(2):
    image, label, mask = toy_batch()
    out = model(image, mask)
    fuse = dice_ce_loss(out.logits, label)                               # L_fuse: soft Dice + cross-entropy
    uni = uni_loss(out.uni, label, mask)                                 # each available modality's prediction
    prm = prm_loss(out.deep, label)                                      # coarser fused levels, weights 2^-s
    kl = pixel_kl_loss(out.uni, out.logits, mask)                        # modality -> fused, temperature 4
    proto = proto_l2_loss(out.uni_features, out.features, label, mask, num_classes=4)
    loss = fuse + uni + prm + 0.5 * kl + 0.1 * proto                     # the seeds' total, by hand
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    print(f"step {step}: loss {loss.item():.3f} (fuse {fuse.item():.3f}, kl {kl.item():.4f}, proto {proto.item():.4f})")
# --8<-- [end:loop]
assert torch.isfinite(loss)

# --8<-- [start:term]
from prism.batch import Batch
from prism.registry import create_loss

term = create_loss("prism", BRATS_MODALITIES, num_classes=4)        # the registered total objective
image, label, mask = toy_batch()
result = term(model(image, mask), Batch(image=image, label=label, mask=mask, availability=mask))
print(f"prism total {result.total.item():.3f}; parts: {', '.join(sorted(result.parts)[:6])}, ...")
# --8<-- [end:term]
assert torch.isfinite(result.total) and result.parts
print("own_loop: ok")
