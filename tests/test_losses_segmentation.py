"""Segmentation loss (Dice + CE): hand-computed values, MONAI agreement, stability, shape checks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from prism.plugins.losses import SegLossOptions, cross_entropy_loss, dice_ce_loss, soft_dice_loss

LOGITS = [[0.0, 1.0, 2.0], [1.0, 0.0, -1.0]]  # [K=2, 3 voxels]
LABEL = [1, 0, 0]


def _softmax(z: np.ndarray, axis: int = 0) -> np.ndarray:
    e = np.exp(z - z.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    return torch.tensor([LOGITS]), torch.tensor([LABEL])


def test_dice_known_value():
    p = _softmax(np.array(LOGITS))
    g = np.eye(2)[LABEL].T
    expected = np.mean([1 - (2 * (p[k] * g[k]).sum() + 1e-5) / (p[k].sum() + g[k].sum() + 1e-5) for k in range(2)])
    got = soft_dice_loss(*_inputs())
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_ce_known_value_and_passion_weights():
    p = _softmax(np.array(LOGITS))
    ce = -np.mean([math.log(p[y, v]) for v, y in enumerate(LABEL)])
    assert cross_entropy_loss(*_inputs()).item() == pytest.approx(ce, rel=1e-5)
    w = {0: 1 - 2 / 3, 1: 1 - 1 / 3}  # w_c = 1 - |y_c| / |y|
    passion = -np.mean([w[y] * math.log(max(p[y, v], 0.005)) for v, y in enumerate(LABEL)])
    got = cross_entropy_loss(*_inputs(), class_weighting="passion")
    assert got.item() == pytest.approx(passion, rel=1e-5)


def test_class_weights_known_value():
    p = _softmax(np.array(LOGITS))
    w = [0.25, 2.0]
    num = -sum(w[y] * math.log(p[y, v]) for v, y in enumerate(LABEL))
    den = sum(w[y] for y in LABEL)
    got = SegLossOptions(class_weights=(0.25, 2.0), lambda_dice=0.0).per_sample(*_inputs())
    assert got.item() == pytest.approx(num / den, rel=1e-5)


@pytest.mark.parametrize("include_background", [True, False])
@pytest.mark.parametrize("lambda_dice,lambda_ce", [(1.0, 1.0), (0.3, 1.7), (1.0, 0.0)])
@pytest.mark.parametrize("smooth", [1e-5, 1.0])
def test_matches_monai_dice_ce(include_background, lambda_dice, lambda_ce, smooth):
    monai_losses = pytest.importorskip("monai.losses")
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 4, 5, 3, generator=g)
    label = torch.randint(0, 3, (2, 4, 5, 3), generator=g)
    ref = monai_losses.DiceCELoss(include_background=include_background, to_onehot_y=True, softmax=True,
                                  smooth_nr=smooth, smooth_dr=smooth, lambda_dice=lambda_dice,
                                  lambda_ce=lambda_ce)(logits, label.unsqueeze(1))
    got = dice_ce_loss(logits, label, include_background=include_background, lambda_dice=lambda_dice,
                       lambda_ce=lambda_ce, smooth_nr=smooth, smooth_dr=smooth)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)


def test_bf16_input_computes_in_float32():
    logits, label = _inputs()
    got = dice_ce_loss(logits.bfloat16(), label)
    assert got.dtype == torch.float32 and torch.isfinite(got)


@pytest.mark.parametrize("class_weighting", ["none", "passion"])
@pytest.mark.parametrize("include_background", [True, False])
def test_empty_classes_and_background_only_are_finite(class_weighting, include_background):
    logits = torch.randn(2, 4, 3, 3, 3, requires_grad=True)
    label = torch.zeros(2, 3, 3, 3, dtype=torch.long)
    loss = dice_ce_loss(logits, label, class_weighting=class_weighting, include_background=include_background)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()


def test_batch_permutation_invariance():
    logits, label = torch.randn(3, 3, 4, 4, 4), torch.randint(0, 3, (3, 4, 4, 4))
    perm = torch.tensor([2, 0, 1])
    for kw in ({}, {"class_weighting": "passion"}, {"include_background": False}):
        torch.testing.assert_close(dice_ce_loss(logits, label, **kw), dice_ce_loss(logits[perm], label[perm], **kw))


@pytest.mark.parametrize("logits_shape,label_shape", [((2, 3, 4, 4), (2, 4, 5)), ((2, 3, 4, 4), (3, 4, 4)),
                                                      ((2, 3), (2,))])
def test_rejects_mismatched_shapes(logits_shape, label_shape):
    with pytest.raises(ValueError):
        dice_ce_loss(torch.randn(*logits_shape), torch.zeros(label_shape, dtype=torch.long))


def test_rejects_wrong_number_of_class_weights():
    with pytest.raises(ValueError, match="class_weights"):
        SegLossOptions(class_weights=(1.0, 2.0, 3.0)).per_sample(*_inputs())
