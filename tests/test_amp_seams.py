"""The CUDA mixed-precision paths, exercised on the CPU: bf16 autocast and fp16 loss scaling (CI has no GPU)."""

from __future__ import annotations

import pytest
import torch

from conftest import fast_config
from prism.engine.trainer import Trainer
from prism.evaluation.inference import predict_combinations
from prism.modalities import BRATS_MODALITIES, combination_masks


def flat(params) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in params])  # channels-last weights are not views of -1


@pytest.mark.parametrize("strategy", ["standard", "meta_drop", "maml"])
def test_bf16_autocast_steps_train(tiny_cache, tmp_path, strategy):
    cfg = fast_config(f"strategy.name={strategy}", "losses=[{name: prism}]", cache=tiny_cache)
    trainer = Trainer(cfg, tmp_path, cache_path=tiny_cache)
    ctx = trainer.ctx
    ctx.amp_dtype = torch.bfloat16  # what train.amp=bf16 selects on CUDA
    before = flat(ctx.parameters()).clone()
    parts = trainer.strategy.step(ctx)
    after = flat(ctx.parameters())
    assert torch.isfinite(parts["loss"]).all() and parts["loss"].dtype == torch.float32  # loss math in fp32
    assert torch.isfinite(after).all() and not torch.equal(before, after)


def test_fp16_loss_scaling_unscales_meta_gradients(tiny_cache, tmp_path):
    """With a GradScaler the meta-gradient is divided by the scale before use: same update as unscaled."""
    sgd = ["optim.name=sgd", "optim.momentum=0", "optim.weight_decay=0", "optim.grad_clip=null"]
    cfg = fast_config("strategy.name=meta_drop", "train.steps=1", *sgd, cache=tiny_cache)
    plain = Trainer(cfg, tmp_path / "a", cache_path=tiny_cache)
    plain.strategy.step(plain.ctx)
    scaled = Trainer(cfg, tmp_path / "b", cache_path=tiny_cache)
    scaled.ctx.scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    scaled.strategy.step(scaled.ctx)
    a = flat(plain.ctx.parameters())
    b = flat(scaled.ctx.parameters())
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_bf16_batched_inference_matches_fp32_mostly():
    torch.manual_seed(0)
    from prism.registry import create_backbone

    model = create_backbone("multi_unet", BRATS_MODALITIES, 4, width=4, depth=3).eval()
    image = torch.randn(4, 16, 16, 16)
    masks = combination_masks(BRATS_MODALITIES)
    fp32 = predict_combinations(model, image, masks, device=torch.device("cpu"))
    bf16 = predict_combinations(model, image, masks, device=torch.device("cpu"), amp_dtype=torch.bfloat16)
    assert bf16.shape == fp32.shape and (bf16 == fp32).float().mean() > 0.9
