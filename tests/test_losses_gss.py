"""GSS: teacher regions by hand, KL known value, only available modalities, gradients, shape checks."""

from __future__ import annotations

import math

import pytest
import torch

from prism.plugins.losses import gss_loss, gss_teacher

# [M=3 (flair, t1, t2), K=2, 3 voxels]
PROBS = [
    [[0.7, 0.5, 0.998], [0.3, 0.5, 0.002]],  # flair
    [[0.8, 0.8, 0.5], [0.2, 0.2, 0.5]],  # t1
    [[0.9, 0.9, 0.6], [0.1, 0.1, 0.4]],  # t2
]


def _norm(v: list[float]) -> list[float]:
    v = [max(x, 0.005) for x in v]
    return [x / sum(v) for x in v]


def _teacher(mask: list[bool]) -> torch.Tensor:
    return gss_teacher(torch.tensor([PROBS]), torch.tensor([mask]), anchor=0)[0]


def test_teacher_regions_all_available():
    expected = [
        _norm([0.7, 0.1]),  # class 0 high (FLAIR 0.7), class 1 low (min 0.1)
        _norm([0.85, 0.1]),  # class 0 medium (t1, t2 > 0.75: mean), class 1 low
        _norm([0.998, 0.002]),  # class 0 high, class 1 low 0.002 clamped to 0.005
    ]
    torch.testing.assert_close(_teacher([True, True, True]), torch.tensor(expected).T)


def test_teacher_regions_with_missing_modalities():
    no_t2 = [_norm([0.7, 0.2]), _norm([0.8, 0.2]), _norm([0.998, 0.002])]
    torch.testing.assert_close(_teacher([True, True, False]), torch.tensor(no_t2).T)
    no_flair = [_norm([0.85, 0.1]), _norm([0.85, 0.1]), _norm([0.5, 0.4])]
    torch.testing.assert_close(_teacher([False, True, True]), torch.tensor(no_flair).T)
    flair_only = [_norm([0.7, 0.3]), _norm([0.5, 0.5]), _norm([0.998, 0.002])]  # no medium region
    torch.testing.assert_close(_teacher([True, False, False]), torch.tensor(flair_only).T)


def test_thresholds_are_parameters():
    t = gss_teacher(torch.tensor([PROBS]), torch.ones(1, 3, dtype=torch.bool), anchor=0, high=0.75, medium=0.95)
    assert t[0, :, 0].tolist() == pytest.approx(_norm([0.7, 0.1]), rel=1e-6)  # 0.7 not high any more: low
    no_anchor = gss_teacher(torch.tensor([PROBS]), torch.ones(1, 3, dtype=torch.bool), anchor=None)
    assert no_anchor[0, :, 2].tolist() == pytest.approx(_norm([0.5, 0.002]), rel=1e-6)  # t1, t2 not > 0.75: low


def test_loss_known_value_one_voxel():
    # two modalities (flair, t1), K=2, one voxel
    logits = [[2.0, 0.0], [0.0, 0.5]]
    p = [[math.exp(a) / sum(math.exp(b) for b in z) for a in z] for z in logits]
    # class 0: flair p=0.881 > 0.65 -> high; class 1: flair 0.119 not high, t1 0.622 not > 0.75 -> low: min
    teacher = _norm([p[0][0], min(p[0][1], p[1][1])])
    kl = [sum(a * math.log(a / b) for a, b in zip(pm, teacher, strict=True)) for pm in p]
    got = gss_loss(torch.tensor(logits).view(1, 2, 2, 1), torch.tensor([[True, True]]), anchor=0,
                   reduction="per_modality")
    torch.testing.assert_close(got, torch.tensor(kl))
    rev = [sum(b * math.log(b / a) for a, b in zip(pm, teacher, strict=True)) for pm in p]
    got = gss_loss(torch.tensor(logits).view(1, 2, 2, 1), torch.tensor([[True, True]]), anchor=0,
                   direction="teacher_student", reduction="per_modality")
    torch.testing.assert_close(got, torch.tensor(rev))


def test_missing_modalities_neither_teach_nor_learn():
    uni = torch.randn(2, 4, 3, 3, 3, 3, requires_grad=True)
    mask = torch.tensor([[True, False, True, True], [False, True, False, False]])
    loss = gss_loss(uni, mask, anchor=0)
    loss.backward()
    assert (uni.grad[~mask] == 0).all() and uni.grad[mask].abs().sum() > 0
    changed = uni.detach().clone()
    changed[~mask] = torch.randn_like(changed[~mask]) * 10
    assert gss_loss(changed, mask, anchor=0).item() == pytest.approx(loss.item(), rel=1e-6)


def test_batch_permutation_invariance_and_stability():
    uni = torch.randn(3, 4, 3, 3, 3, 3) * 50
    mask = torch.tensor([[True, False, True, True], [False, True, False, False], [False, False, False, False]])
    perm = torch.tensor([1, 2, 0])
    a, b = gss_loss(uni, mask, anchor=0), gss_loss(uni[perm], mask[perm], anchor=0)
    assert torch.isfinite(a)
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize("uni_shape,mask_shape,anchor", [((2, 4, 3, 3), (2, 3), 0), ((2, 4), (2, 4), 0),
                                                         ((2, 4, 3, 3), (2, 4), 4)])
def test_rejects_mismatched_shapes(uni_shape, mask_shape, anchor):
    with pytest.raises(ValueError):
        gss_loss(torch.randn(*uni_shape), torch.ones(mask_shape, dtype=torch.bool), anchor=anchor)
