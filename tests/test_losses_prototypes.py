"""proto_l2: hand-computed prototype gap, absent classes, PASSION variant, gradients, shape checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from prism.plugins.losses import PROTO_VARIANTS, proto_gap, proto_l2_loss

LABEL = [0, 0, 1]
TEACHER = [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]  # voxel x channel
STUDENT = [[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _sims(feats: list[list[float]], label: list[int], k: int) -> np.ndarray:
    f = np.array(feats)
    protos = [f[[i for i, y in enumerate(label) if y == c]].mean(0) for c in range(k)]
    return np.array([[_cos(f[v], protos[c]) for v in range(len(label))] for c in range(k)])


def _tensors(k_label: list[int] = LABEL) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    teacher = torch.tensor(TEACHER).T.reshape(1, 2, 1, 1, 3)  # [B, C, D, H, W]
    student = torch.tensor(STUDENT).T.reshape(1, 1, 2, 1, 1, 3)  # [B, M, C, D, H, W]
    return student, teacher, torch.tensor(k_label).view(1, 1, 1, 3)


def test_gap_known_value_and_absent_classes():
    diff = (_sims(STUDENT, LABEL, 2) - _sims(TEACHER, LABEL, 2)) ** 2
    expected_sum, expected_mean = diff.mean(1).sum(), diff.mean(1).mean()
    s, t, y = _tensors()
    for k in (2, 5):  # classes 2..4 are absent: same value, no NaN
        got = proto_gap(s, t, y, num_classes=k)
        assert got.item() == pytest.approx(expected_sum, rel=1e-5)
        got = proto_gap(s, t, y, num_classes=k, **PROTO_VARIANTS["passion"])
        assert got.item() == pytest.approx(expected_mean, rel=1e-5)


def test_identical_paths_have_zero_gap():
    t = torch.randn(2, 3, 4, 4, 4)
    s = t.unsqueeze(1).repeat(1, 2, 1, 1, 1, 1)
    y = torch.randint(0, 3, (2, 4, 4, 4))
    assert proto_gap(s, t, y, num_classes=3).abs().max() < 1e-6


def test_batch_presence_uses_classes_present_in_every_sample():
    g = torch.Generator().manual_seed(0)
    t, s = torch.randn(2, 3, 2, 2, 2, generator=g), torch.randn(2, 1, 3, 2, 2, 2, generator=g)
    y = torch.zeros(2, 2, 2, 2, dtype=torch.long)
    y[0, 0, 0, 0] = 1  # class 1 only in sample 0
    per_sample = proto_gap(s, t, y, num_classes=2, class_reduction="mean")
    batch = proto_gap(s, t, y, num_classes=2, class_reduction="mean", class_presence="batch")
    torch.testing.assert_close(batch[1], per_sample[1])  # sample 1 has only background anyway
    assert batch[0].item() != pytest.approx(per_sample[0].item())
    assert torch.isfinite(batch).all()


def test_loss_masks_modalities_and_detaches_teacher():
    t = torch.randn(2, 4, 3, 3, 3, requires_grad=True)
    s = torch.randn(2, 3, 4, 3, 3, 3, requires_grad=True)
    y = torch.randint(0, 3, (2, 3, 3, 3))
    mask = torch.tensor([[True, False, True], [False, False, True]])
    gaps = proto_gap(s, t, y, num_classes=3)
    loss = proto_l2_loss(s, t, y, mask, num_classes=3)
    assert loss.item() == pytest.approx((gaps * mask).sum().item() / 2, rel=1e-5)
    loss.backward()
    assert t.grad is None
    assert (s.grad[~mask] == 0).all() and s.grad[mask].abs().sum() > 0


def test_gate_multiplies_the_gap():
    t, s = torch.randn(1, 4, 3, 3, 3), torch.randn(1, 2, 4, 3, 3, 3)
    y = torch.randint(0, 3, (1, 3, 3, 3))
    mask = torch.ones(1, 2, dtype=torch.bool)
    gaps = proto_gap(s, t, y, num_classes=3)
    gated = proto_l2_loss(s, t, y, mask, num_classes=3, gate=torch.tensor([[0.0, 1.0]]), reduction="none")
    torch.testing.assert_close(gated, gaps * torch.tensor([[0.0, 1.0]]))


@pytest.mark.parametrize("variant", sorted(PROTO_VARIANTS))
def test_all_background_and_zero_features_are_finite(variant):
    t = torch.zeros(2, 4, 3, 3, 3, requires_grad=True)
    s = torch.zeros(2, 2, 4, 3, 3, 3, requires_grad=True)
    y = torch.zeros(2, 3, 3, 3, dtype=torch.long)
    loss = proto_l2_loss(s, t, y, torch.ones(2, 2, dtype=torch.bool), num_classes=4, **PROTO_VARIANTS[variant])
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(s.grad).all()


@pytest.mark.parametrize("variant", sorted(PROTO_VARIANTS))
def test_batch_permutation_invariance(variant):
    t, s = torch.randn(3, 4, 3, 3, 3), torch.randn(3, 2, 4, 3, 3, 3)
    y, mask = torch.randint(0, 3, (3, 3, 3, 3)), torch.tensor([[True, False], [True, True], [False, True]])
    perm = torch.tensor([2, 0, 1])
    a = proto_l2_loss(s, t, y, mask, num_classes=3, **PROTO_VARIANTS[variant])
    b = proto_l2_loss(s[perm], t[perm], y[perm], mask[perm], num_classes=3, **PROTO_VARIANTS[variant])
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize("s_shape,t_shape,y_shape", [
    ((2, 3, 4, 3, 3, 3), (2, 4, 3, 3, 2), (2, 3, 3, 3)),
    ((2, 3, 4, 3, 3, 3), (2, 5, 3, 3, 3), (2, 3, 3, 3)),
    ((2, 3, 4, 3, 3, 3), (2, 4, 3, 3, 3), (2, 3, 3, 4)),
    ((2, 4, 3, 3, 3), (2, 4, 3, 3, 3), (2, 3, 3, 3)),
])
def test_rejects_mismatched_shapes(s_shape, t_shape, y_shape):
    with pytest.raises(ValueError):
        proto_l2_loss(torch.randn(*s_shape), torch.randn(*t_shape), torch.zeros(y_shape, dtype=torch.long),
                      torch.ones(2, 3, dtype=torch.bool), num_classes=3)
