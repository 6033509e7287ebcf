"""Label resampling, PRM and uni losses: known values, masking, gradients, shape checks."""

from __future__ import annotations

import pytest
import torch

from prism.plugins.losses import SegLossOptions, deep_supervision_loss, prm_loss, resample_labels, uni_loss


def test_resample_labels_maxpool_keeps_single_voxel():
    label = torch.zeros(1, 4, 4, dtype=torch.long)
    label[0, 3, 3] = 2
    label[0, 0, 1] = 1
    pooled = resample_labels(label, (2, 2), "maxpool")
    assert pooled.tolist() == [[[1, 0], [0, 2]]]
    nearest = resample_labels(label, (2, 2), "nearest")
    assert nearest.tolist() == [[[0, 0], [0, 0]]]  # the first voxel of every window


def test_resample_labels_3d_and_identity():
    label = torch.randint(0, 4, (2, 4, 4, 4))
    assert resample_labels(label, (4, 4, 4)) is label
    out = resample_labels(label, (2, 2, 2))
    assert out.shape == (2, 2, 2, 2) and out.dtype == torch.long
    assert out[1, 1, 0, 1] == label[1, 2:4, 0:2, 2:4].max()


@pytest.mark.parametrize("size,mode", [((3, 3), "maxpool"), ((2,), "maxpool"), ((2, 2), "bilinear")])
def test_resample_labels_rejects(size, mode):
    with pytest.raises(ValueError):
        resample_labels(torch.zeros(1, 4, 4, dtype=torch.long), size, mode)


def _ce_only() -> SegLossOptions:
    return SegLossOptions(lambda_dice=0.0)


def test_prm_known_value():
    # one deep level (s=1, weight 1/2) of a 1x2 label map [B=1, 2, 2] -> [1, 1, 1]; constant logits -> CE = log 2
    label = torch.tensor([[[0, 1], [0, 0]]])
    deep = [torch.zeros(1, 2, 1, 1)]
    got = prm_loss(deep, label, options=_ce_only())
    assert got.item() == pytest.approx(0.5 * torch.log(torch.tensor(2.0)).item(), rel=1e-6)
    # the max-pooled label is 1, so logits favouring class 1 by 3 give CE = log(1 + e^-3), weight 1/2
    deep = [torch.tensor([0.0, 3.0]).view(1, 2, 1, 1)]
    assert prm_loss(deep, label, options=_ce_only()).item() == pytest.approx(
        0.5 * torch.log1p(torch.exp(torch.tensor(-3.0))).item(), rel=1e-6)


def test_deep_supervision_weights_and_empty():
    label = torch.randint(0, 3, (2, 8, 8, 8))
    levels = [torch.randn(2, 3, 4, 4, 4), torch.randn(2, 3, 2, 2, 2)]
    opts = SegLossOptions()
    expected = 0.5 * opts.per_sample(levels[0], resample_labels(label, (4, 4, 4))) + \
        0.25 * opts.per_sample(levels[1], resample_labels(label, (2, 2, 2)))
    torch.testing.assert_close(deep_supervision_loss(levels, label), expected)
    custom = deep_supervision_loss(levels, label, weights=[1.0, 0.0])
    torch.testing.assert_close(custom, 2 * 0.5 * opts.per_sample(levels[0], resample_labels(label, (4, 4, 4))))
    assert prm_loss([], label).item() == 0.0


def test_uni_known_value_sums_available_modalities():
    # B=2, M=2, K=2, 1 voxel; CE only: -log softmax
    uni = torch.tensor([[[2.0, 0.0], [0.0, 1.0]], [[0.0, 0.0], [1.0, -1.0]]]).view(2, 2, 2, 1)
    label = torch.tensor([[0], [1]])
    mask = torch.tensor([[True, True], [False, True]])
    ce = -torch.log_softmax(uni, dim=2)[torch.arange(2)[:, None], torch.arange(2)[None], label]  # [B, M, 1]
    ce = ce.squeeze(-1)
    expected_per_mod = torch.tensor([(ce[0, 0] + 0) / 2, (ce[0, 1] + ce[1, 1]) / 2])
    got = uni_loss(uni, label, mask, options=_ce_only(), reduction="per_modality")
    torch.testing.assert_close(got, expected_per_mod)
    total = uni_loss(uni, label, mask, options=_ce_only())
    assert total.item() == pytest.approx(expected_per_mod.sum().item(), rel=1e-6)


def test_uni_missing_modalities_get_no_gradient_and_deep_levels_count():
    uni = torch.randn(2, 3, 4, 4, 4, 4, requires_grad=True)
    uni_deep = [torch.randn(2, 3, 4, 2, 2, 2, requires_grad=True)]
    label = torch.randint(0, 4, (2, 4, 4, 4))
    mask = torch.tensor([[True, False, True], [False, False, True]])
    loss = uni_loss(uni, label, mask, uni_deep=uni_deep)
    loss.backward()
    for t in (uni, uni_deep[0]):
        assert (t.grad[~mask] == 0).all()
        assert t.grad[mask].abs().sum() > 0
    flat = uni_loss(uni, label, mask)
    assert loss.item() > flat.item()


def test_uni_batch_permutation_invariance():
    uni, label = torch.randn(3, 2, 3, 4, 4, 4), torch.randint(0, 3, (3, 4, 4, 4))
    mask = torch.tensor([[True, False], [True, True], [False, True]])
    deep = [torch.randn(3, 2, 3, 2, 2, 2)]
    perm = torch.tensor([1, 2, 0])
    torch.testing.assert_close(uni_loss(uni, label, mask, uni_deep=deep),
                               uni_loss(uni[perm], label[perm], mask[perm], uni_deep=[deep[0][perm]]))


@pytest.mark.parametrize("uni_shape,mask_shape", [((2, 3, 4, 4, 4), (2, 3)), ((2, 3, 4, 4, 4, 5), (2, 3)),
                                                  ((2, 3, 4, 4, 4, 4), (2, 2))])
def test_uni_rejects_mismatched_shapes(uni_shape, mask_shape):
    with pytest.raises(ValueError):
        uni_loss(torch.randn(*uni_shape), torch.zeros(2, 4, 4, 4, dtype=torch.long), torch.ones(mask_shape).bool())


def test_prm_rejects_mismatched_level():
    with pytest.raises(ValueError):
        prm_loss([torch.randn(2, 3, 3, 3, 3)], torch.zeros(2, 8, 8, 8, dtype=torch.long))
