"""pixel_kl: hand-computed KL (both directions), decoder levels, detached teacher, missing modalities."""

from __future__ import annotations

import math

import pytest
import torch

from prism.plugins.losses import PIXEL_KL_VARIANTS, pixel_kl_loss

STUDENT = [[4.0, 0.0, -4.0], [1.0, 1.0, 1.0]]  # [M=2, K=3] logits at one voxel
TEACHER = [0.0, 4.0, 0.0]


def _softmax(z: list[float], t: float) -> list[float]:
    e = [math.exp(v / t) for v in z]
    return [v / sum(e) for v in e]


def _kl(p: list[float], q: list[float]) -> float:
    return sum(a * math.log(a / b) for a, b in zip(p, q, strict=True))


def _tensors() -> tuple[torch.Tensor, torch.Tensor]:
    return torch.tensor(STUDENT).view(1, 2, 3, 1), torch.tensor(TEACHER).view(1, 3, 1)


def test_seeds_definition_known_value():
    pt = _softmax(TEACHER, 4.0)
    expected = [_kl(_softmax(s, 4.0), pt) for s in STUDENT]
    # the softened KL is scaled by mu^2 (Hinton et al. 2015, sec. 2) unless asked not to
    got = pixel_kl_loss(*_tensors(), torch.tensor([[True, True]]), reduction="per_modality")
    torch.testing.assert_close(got, 16.0 * torch.tensor(expected))
    unscaled = pixel_kl_loss(*_tensors(), torch.tensor([[True, True]]), reduction="per_modality",
                             scale_by_temperature=False)
    torch.testing.assert_close(unscaled, torch.tensor(expected))
    at_one = pixel_kl_loss(*_tensors(), torch.tensor([[True, True]]), temperature=1.0, reduction="per_modality")
    torch.testing.assert_close(at_one, torch.tensor([_kl(_softmax(s, 1.0), _softmax(TEACHER, 1.0))
                                                     for s in STUDENT]))  # mu = 1: the factor is 1


def test_passion_variant_known_value():
    pt = _softmax(TEACHER, 4.0)
    expected = [16.0 * _kl(pt, _softmax(s, 4.0)) / 3 for s in STUDENT]  # mu^2, mean over classes
    got = pixel_kl_loss(*_tensors(), torch.tensor([[True, False]]), reduction="none", **PIXEL_KL_VARIANTS["passion"])
    torch.testing.assert_close(got, torch.tensor([[expected[0], 0.0]]))


def test_levels_are_summed():
    s, t = _tensors()
    mask = torch.tensor([[True, True]])
    base = pixel_kl_loss(s, t, mask)
    # a coarser level identical in content doubles the loss; a level with equal student and teacher adds 0
    assert pixel_kl_loss(s, t, mask, student_deep=[s], teacher_deep=[t]).item() == pytest.approx(2 * base.item())
    same = torch.zeros(1, 2, 3, 1)
    assert pixel_kl_loss(s, t, mask, student_deep=[same], teacher_deep=[torch.zeros(1, 3, 1)]).item() == \
        pytest.approx(base.item())


def test_batch_mean_over_samples_sum_over_modalities():
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(3, 2, 4, 5, 5, 5, generator=g), torch.randn(3, 4, 5, 5, 5, generator=g)
    mask = torch.tensor([[True, False], [True, True], [False, True]])
    none = pixel_kl_loss(s, t, mask, reduction="none")
    assert (none[~mask] == 0).all() and (none[mask] > 0).all()
    torch.testing.assert_close(pixel_kl_loss(s, t, mask), none.sum() / 3)
    perm = torch.tensor([2, 0, 1])
    torch.testing.assert_close(pixel_kl_loss(s[perm], t[perm], mask[perm]), pixel_kl_loss(s, t, mask))


@pytest.mark.parametrize("variant", sorted(PIXEL_KL_VARIANTS))
def test_gradients_only_reach_available_students(variant):
    s = torch.randn(2, 3, 4, 3, 3, 3, requires_grad=True)
    t = torch.randn(2, 4, 3, 3, 3, requires_grad=True)
    sd, td = torch.randn(2, 3, 4, 2, 2, 2, requires_grad=True), torch.randn(2, 4, 2, 2, 2, requires_grad=True)
    mask = torch.tensor([[True, False, True], [False, False, True]])
    loss = pixel_kl_loss(s, t, mask, student_deep=[sd], teacher_deep=[td], **PIXEL_KL_VARIANTS[variant])
    loss.backward()
    assert t.grad is None and td.grad is None
    for x in (s, sd):
        assert (x.grad[~mask] == 0).all() and x.grad[mask].abs().sum() > 0


def test_bf16_inputs_and_extreme_logits_are_finite():
    s = (torch.randn(1, 2, 4, 3, 3, 3) * 1e3).bfloat16()
    t = (torch.randn(1, 4, 3, 3, 3) * 1e3).bfloat16()
    loss = pixel_kl_loss(s, t, torch.tensor([[True, True]]))
    assert loss.dtype == torch.float32 and torch.isfinite(loss)


@pytest.mark.parametrize("s_shape,t_shape,m_shape", [
    ((2, 3, 4, 5, 5, 5), (2, 4, 5, 5, 4), (2, 3)),
    ((2, 3, 4, 5, 5, 5), (2, 3, 5, 5, 5), (2, 3)),
    ((2, 3, 4, 5, 5, 5), (2, 4, 5, 5, 5), (2, 2)),
    ((2, 3, 4, 5, 5, 5), (1, 4, 5, 5, 5), (2, 3)),
])
def test_rejects_mismatched_shapes(s_shape, t_shape, m_shape):
    with pytest.raises(ValueError):
        pixel_kl_loss(torch.randn(*s_shape), torch.randn(*t_shape), torch.ones(m_shape, dtype=torch.bool))


def test_rejects_mismatched_level_counts_and_bad_options():
    s, t = _tensors()
    mask = torch.tensor([[True, True]])
    with pytest.raises(ValueError):
        pixel_kl_loss(s, t, mask, student_deep=[s, s], teacher_deep=[t])
    with pytest.raises(ValueError):
        pixel_kl_loss(s, t, mask, direction="sideways")
    with pytest.raises(ValueError):
        pixel_kl_loss(s, t, mask, temperature=0.0)
