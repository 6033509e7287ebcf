"""Sliding-window and whole-volume inference: every combination in one batched pass equals one pass each."""

from __future__ import annotations

import pytest
import torch

from prism.errors import ConfigError
from prism.evaluation.inference import predict_combinations, predict_logits
from prism.evaluation.options import EvalOptions
from prism.modalities import BRATS_MODALITIES, combination_masks
from prism.registry import create_backbone

pytest.importorskip("monai")

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return create_backbone("multi_unet", BRATS_MODALITIES, 4, width=4, depth=3).eval()


def test_sliding_window_batched_combinations_equal_one_sweep_per_combination(model):
    image = torch.randn(4, 12, 8, 12)  # 2 x 1 x 2 windows of 8^3 at overlap 0.5
    masks = combination_masks(BRATS_MODALITIES)
    batched = predict_logits(model, image, masks, device=CPU,
                             options=EvalOptions(window=(8, 8, 8), overlap=0.5, sw_batch_size=3))
    assert batched.shape == (15, 4, 12, 8, 12)
    labels = predict_combinations(model, image, masks, device=CPU,
                                  options=EvalOptions(window=(8, 8, 8), sw_batch_size=3))
    for i in range(15):
        single = predict_logits(model, image, masks[i:i + 1], device=CPU,
                                options=EvalOptions(window=(8, 8, 8), overlap=0.5, sw_batch_size=1))
        torch.testing.assert_close(batched[i], single[0], rtol=1e-5, atol=1e-5)
        assert torch.equal(labels[i], single[0].argmax(0).to(torch.uint8)), i


def test_one_window_covering_the_volume_equals_whole_volume_inference(model):
    # a single window: the Gaussian weights divide out, leaving the plain forward pass
    image = torch.randn(4, 8, 12, 16)
    masks = combination_masks(BRATS_MODALITIES)[[0, 7, 14]]
    whole = predict_logits(model, image, masks, device=CPU)
    window = predict_logits(model, image, masks, device=CPU, options=EvalOptions(window=(8, 12, 16)))
    torch.testing.assert_close(window, whole, rtol=1e-5, atol=1e-5)


def test_sliding_windows_blend_like_monai_gaussian_for_each_combination(model):
    from monai.inferers import sliding_window_inference

    image = torch.randn(4, 12, 8, 14)
    masks = combination_masks(BRATS_MODALITIES)[[3, 9]]
    ours = predict_logits(model, image, masks, device=CPU,
                          options=EvalOptions(window=(8, 8, 8), overlap=0.25, sw_batch_size=2))
    for i in range(2):
        m = masks[i:i + 1]

        def one(x, m=m):
            return model(x * m[:, :, None, None, None], m.expand(x.shape[0], -1)).logits

        gaussian = sliding_window_inference(image[None], (8, 8, 8), 1, one, overlap=0.25, mode="gaussian")
        constant = sliding_window_inference(image[None], (8, 8, 8), 1, one, overlap=0.25, mode="constant")
        torch.testing.assert_close(ours[i], gaussian[0], rtol=1e-5, atol=1e-5)
        assert not torch.allclose(ours[i], constant[0], atol=1e-4)


def test_window_not_divisible_is_a_config_error(model):
    with pytest.raises(ConfigError, match="eval.window"):
        predict_logits(model, torch.randn(4, 8, 8, 8), combination_masks(BRATS_MODALITIES)[:1], device=CPU,
                       options=EvalOptions(window=(6, 8, 8)))
    with pytest.raises(ConfigError, match="eval.overlap"):
        EvalOptions(window=(8, 8, 8), overlap=1.0)  # refused before anything is predicted


@pytest.mark.parametrize("per_pass", [0, -2])
def test_combos_per_pass_below_one_is_a_config_error(per_pass):
    with pytest.raises(ConfigError, match="combos_per_pass"):
        EvalOptions(combos_per_pass=per_pass)


def test_combos_per_pass_splits_into_passes_with_the_same_labels(model):
    image, masks = torch.randn(4, 8, 8, 8), combination_masks(BRATS_MODALITIES)
    together = predict_combinations(model, image, masks, device=CPU, options=EvalOptions(combos_per_pass=15))
    for per_pass in (1, 4, 16):
        split = predict_combinations(model, image, masks, device=CPU, options=EvalOptions(combos_per_pass=per_pass))
        assert torch.equal(split, together)
