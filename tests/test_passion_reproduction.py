"""The preset ``passion_brats2020_mr2468`` computes PASSION's total objective, term by term.

The reference below is PASSION's objective written here in float64 from its definitions, as its training loop
computes it (Jun-Jie-Shi/PASSION: code/train.py, the PASSION-IDT branch; code/models/rfnet_passion.py, the
training forward; code/utils/criterions.py, ``softmax_weighted_loss``, ``dice_loss``, ``temp_kl_loss``,
``prototype_passion_loss``), one sample at a time and summed over the batch, with torch's own float64 operations
and nothing from prism. Its inputs are RFNet's training outputs for one batch: the fused logits, the region maps
of the four decoder levels (the first at full resolution), the same for every single-modality path, the separate
decoder's logits and the level-1 features.

Where PASSION's code indexes the first sample for a per-sample quantity (``sum(mask[0])`` in the gate, the whole
batch's target in the fused loss), the reference uses each sample's own, and a sample whose prototype distances are
all 0 (one available modality: its single-modality path is the fused path) adds 0 to the gate's score where
PASSION's code divides 0 by 0 (the NaN turns every gate of the step off). PASSION trains with batch 1, where each
of these agrees with its code.
"""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from prism.batch import Batch
from prism.plugins.backbones.rfnet import RFNetOutput
from prism.registry import create_backbone, create_loss

MODS = ("flair", "t1ce", "t1", "t2")  # PASSION's mask order
K = 4  # BraTS: background, NCR/NET, ED, ET
C = 8  # RFNet width 8: level-1 features
SIZE = (16, 8, 8)
FLOOR = 0.005
T = 4.0  # PASSION's --temp
#: PASSION's modal_weight on mr2468: iter_per_epoch / modal_num = 219 / (90, 135, 184, 43)
MODAL_WEIGHT = [219 / 90, 219 / 135, 219 / 184, 219 / 43]
IMB_BETA = [0.5, 1.2, 0.8, 1.5]  # a preference state that is not all ones, so that every factor shows
#: the 15 combinations of available modalities (at least one)
MASKS = [m for m in itertools.product([False, True], repeat=4) if any(m)]


# ---- PASSION's objective, from its definitions (float64) ------------------------------------------------------

def weighted_ce(p: torch.Tensor, onehot: torch.Tensor) -> torch.Tensor:
    """``softmax_weighted_loss``: w_c = 1 - |y_c| / |y|, -sum_c w_c y_c log clamp(p_c, 0.005, 1), mean over voxels."""
    w = 1.0 - onehot.sum((1, 2, 3)) / onehot.sum()
    return (-(w[:, None, None, None] * onehot * p.clamp(FLOOR, 1.0).log()).sum(0)).mean()


def dice(p: torch.Tensor, onehot: torch.Tensor) -> torch.Tensor:
    """``dice_loss``: 1 - (1/K) sum_c 2 |p_c y_c| / (|p_c| + |y_c| + 1e-7)."""
    return 1.0 - sum(2.0 * (p[c] * onehot[c]).sum() / (p[c].sum() + onehot[c].sum() + 1e-7) for c in range(K)) / K


def seg(p: torch.Tensor, onehot: torch.Tensor) -> torch.Tensor:
    return weighted_ce(p, onehot) + dice(p, onehot)


def up_ops() -> list[nn.Module]:
    """RFNet's ``up_ops`` for its region-map levels 1..4: identity, then x2, x4, x8 (trilinear, align_corners)."""
    return [nn.Identity()] + [nn.Upsample(scale_factor=f, mode="trilinear", align_corners=True) for f in (2, 4, 8)]


def temp_kl(logit_s: torch.Tensor, logit_t: torch.Tensor, up: nn.Module) -> torch.Tensor:
    """``temp_kl_loss``: softmax(z / T), upsampled, clamped at 0.005 (the teacher's clamp is also its weight),
    T^2 mean over classes and voxels of p_t (log p_t - log p_s)."""
    p_s = up(F.softmax(logit_s[None] / T, dim=1)).clamp(FLOOR, 1.0)
    p_t = up(F.softmax(logit_t[None] / T, dim=1)).clamp(FLOOR, 1.0)
    return (T * T * p_t * (p_t.log() - p_s.log())).mean()


def prototype_passion(f_s: torch.Tensor, f_t: torch.Tensor, onehot: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """``prototype_passion_loss`` on one sample: for the classes present, prototypes sum(f y) / (|y| + 1e-5), cosine
    maps (eps 1e-5); the mean squared and the mean absolute difference of the maps."""
    eps = 1e-5
    s, t = [], []
    for c in range(K):
        y = onehot[c][None]
        if y.sum() > 0:
            proto_s = (f_s * y).sum((1, 2, 3)) / (y.sum() + eps)
            proto_t = (f_t * y).sum((1, 2, 3)) / (y.sum() + eps)
            s.append(F.cosine_similarity(f_s, proto_s[:, None, None, None], dim=0, eps=eps))
            t.append(F.cosine_similarity(f_t, proto_t[:, None, None, None], dim=0, eps=eps))
    diff = torch.stack(s) - torch.stack(t)
    return (diff**2).mean(), diff.abs().mean()


def passion_objective(out: RFNetOutput, label: torch.Tensor, mask: torch.Tensor) -> dict[str, object]:
    """PASSION's training loss for one batch (its loop over the samples, PASSION-IDT branch, after the warm-up)."""
    ups = up_ops()
    fuse = torch.zeros((), dtype=torch.float64)
    prm = torch.zeros((), dtype=torch.float64)
    sep, kl, proto, rp_iter = (torch.zeros(4, dtype=torch.float64) for _ in range(4))
    for b in range(label.shape[0]):
        onehot = F.one_hot(label[b], K).movedim(-1, 0).double()
        fused_levels = [out.region0[b]] + [d[b] for d in out.deep]  # RFNet's prm_pred1..4
        fuse = fuse + seg(F.softmax(out.logits[b], dim=0), onehot)
        for w, (level, up) in enumerate(zip(fused_levels, ups, strict=True), start=1):
            prm = prm + 2.0**-w * seg(up(F.softmax(level[None], dim=1))[0], onehot)
        dist = torch.zeros(4, dtype=torch.float64)
        for m in range(4):
            if not mask[b, m]:
                continue
            sep[m] += seg(F.softmax(out.sep[b, m], dim=0), onehot)
            proto_m, dist[m] = prototype_passion(out.uni_features[b, m], out.features[b], onehot)
            proto[m] += proto_m
            kl[m] += temp_kl(out.uni[b, m], out.logits[b], nn.Identity())
            single_levels = [out.uni_region0[b, m]] + [d[b, m] for d in out.uni_deep]
            for w, (s_level, t_level, up) in enumerate(zip(single_levels, fused_levels, ups, strict=True), start=1):
                kl[m] += 2.0**-w * temp_kl(s_level, t_level, up)
        dist_avg = dist.sum() / mask[b].sum()
        if dist_avg > 0:
            rp_iter += mask[b].double() * (dist / dist_avg - 1.0)
    rp_mask = (rp_iter > 0).double()
    imb_beta, modal_weight = torch.tensor(IMB_BETA, dtype=torch.float64), torch.tensor(MODAL_WEIGHT,
                                                                                      dtype=torch.float64)
    kl_loss = (imb_beta * modal_weight * kl).sum()
    proto_loss = (rp_mask * modal_weight * proto).sum()
    sep_loss = (rp_mask * imb_beta * modal_weight * sep).sum()
    total = fuse + sep_loss + prm + kl_loss * 0.5 + proto_loss * 0.1
    return {"total": total, "fuse": fuse, "prm": prm, "sep": sep, "kl": kl, "proto": proto, "rp_mask": rp_mask,
            "kl_loss": 0.5 * kl_loss, "proto_loss": 0.1 * proto_loss, "sep_loss": sep_loss}


# ---- the preset's term on the same inputs ------------------------------------------------------------------------

def preset_term():
    from test_losses_passion import preset_options

    term = create_loss("prism", MODS, K, **preset_options())
    state = term.state_dict()
    state["preference"]["coefficients"] = IMB_BETA
    term.load_state_dict(state)
    return term


def rfnet_output(seed: int, b: int, scale: float) -> RFNetOutput:
    """Random float64 tensors shaped as RFNet's training output (width 8, 4 levels) at a logit scale."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape: int, s: float = scale) -> torch.Tensor:
        return s * torch.randn(*shape, generator=g, dtype=torch.float64)

    deep = [tuple(n // 2**lv for n in SIZE) for lv in (1, 2, 3)]
    out = RFNetOutput(logits=r(b, K, *SIZE), deep=[r(b, K, *d) for d in deep], uni=r(b, 4, K, *SIZE),
                      uni_deep=[r(b, 4, K, *d) for d in deep], features=r(b, C, *SIZE, s=1.0),
                      uni_features=r(b, 4, C, *SIZE, s=1.0))
    out.sep, out.region0, out.uni_region0 = r(b, 4, K, *SIZE), r(b, K, *SIZE), r(b, 4, K, *SIZE)
    return out


def labels(seed: int, b: int) -> torch.Tensor:
    """Labels with absent classes: sample 0 lacks ET (3), sample 1 lacks NCR (1); blobs, not noise."""
    g = torch.Generator().manual_seed(seed)
    label = torch.zeros(b, *SIZE, dtype=torch.long)
    for i in range(b):
        present = [c for c in (1, 2, 3) if c != (3 if i == 0 else 1)]
        for c in present:
            lo = [int(torch.randint(0, n // 2, (1,), generator=g)) for n in SIZE]
            label[i, lo[0]:lo[0] + SIZE[0] // 2, lo[1]:lo[1] + SIZE[1] // 2, lo[2]:lo[2] + SIZE[2] // 2] = c
    return label


def compare(out: RFNetOutput, label: torch.Tensor, mask: torch.Tensor) -> dict[str, object]:
    """Assert that the preset's total and every term equal the reference's to 1e-6 relative; the reference."""
    ref = passion_objective(out, label, mask)
    batch = Batch(torch.zeros(label.shape[0], 4, *SIZE), label, mask, mask.clone())
    result = preset_term()(out, batch)
    parts, pieces = result.parts, result.contributions

    def close(got: torch.Tensor, expected: torch.Tensor, what: str) -> None:
        assert float(got) == pytest.approx(float(expected), rel=1e-6, abs=1e-12), what

    close(result.total, ref["total"], "total")
    close(parts["fuse"], ref["fuse"], "fuse")
    close(parts["prm"], ref["prm"], "prm")
    for m, name in enumerate(MODS):
        close(parts[f"rfnet_sep/{name}"], ref["sep"][m], f"sep/{name}")
        close(parts[f"pixel_kl/{name}"], ref["kl"][m], f"pixel_kl/{name}")
        close(parts[f"proto_l2/{name}"], ref["rp_mask"][m] * ref["proto"][m], f"gated proto/{name}")
    close(pieces["pixel_kl"], ref["kl_loss"], "weighted pixel_kl")
    close(pieces["proto_l2"], ref["proto_loss"], "weighted proto_l2")
    close(pieces["rfnet_sep"], ref["sep_loss"], "weighted sep")
    return ref


@pytest.mark.parametrize("scale", [1.0, 6.0, 25.0])
@pytest.mark.parametrize("index", range(len(MASKS)))
def test_batch_one_every_mask(index, scale):
    mask = torch.tensor([MASKS[index]])
    compare(rfnet_output(100 * index + int(scale), 1, scale), labels(index, 1), mask)


@pytest.mark.parametrize("scale", [1.0, 6.0, 25.0])
@pytest.mark.parametrize("index", range(len(MASKS)))
def test_batch_two_every_mask(index, scale):
    """Each mask beside another (the next one), so the batch sums and the gate over the batch are exercised."""
    mask = torch.tensor([MASKS[index], MASKS[(index + 7) % len(MASKS)]])
    compare(rfnet_output(1000 + 100 * index + int(scale), 2, scale), labels(50 + index, 2), mask)


def test_the_reference_exercises_every_factor():
    """The inputs reach every branch the comparison should see: gates both ways, clamps, absent classes."""
    mask = torch.tensor([[True, True, True, True], [True, False, True, True]])
    out, label = rfnet_output(7, 2, 25.0), labels(8, 2)
    ref = compare(out, label, mask)
    assert 0 < ref["rp_mask"].sum() < 4  # some modalities gated on, some off
    assert (F.softmax(out.logits / T, dim=1) < FLOOR).any()  # the KL clamp is active at this scale
    assert not (label[0] == 3).any() and not (label[1] == 1).any()  # classes absent from a sample


def test_the_backbone_output_fits_the_reference():
    """RFNet's own training output (float64, the parts the preset requests) compared the same way."""
    term = preset_term()
    torch.manual_seed(0)
    model = create_backbone("rfnet", MODS, K, width=C).double().train()
    assert term.needs <= model.provides
    model.request_parts(term.needs)
    mask = torch.tensor([[True, False, True, True], [False, True, False, False]])
    image = torch.randn(2, 4, *SIZE, dtype=torch.float64) * mask[:, :, None, None, None]
    with torch.no_grad():
        out = model(image, mask)
    assert out.uni_region0.shape == (2, 4, K, *SIZE) and out.region0.shape == (2, K, *SIZE)
    compare(out, labels(9, 2), mask)


def test_float32_stays_close():
    """The default precision (float32 inputs) is within 1e-4 of the float64 reference."""
    mask = torch.tensor([[True, True, False, True]])
    out, label = rfnet_output(11, 1, 6.0), labels(12, 1)
    ref = passion_objective(out, label, mask)
    single = RFNetOutput(**{k: (v.float() if isinstance(v, torch.Tensor) else [t.float() for t in v])
                            for k, v in vars(out).items() if v is not None})
    got = preset_term()(single, Batch(torch.zeros(1, 4, *SIZE), label, mask, mask.clone())).total
    assert got.dtype == torch.float32 and float(got) == pytest.approx(float(ref["total"]), rel=1e-4)
