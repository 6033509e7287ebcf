"""The strategy contract (every registered strategy through StepContext alone: tests/test_strategies.py runs the
conformance kit on each); MAML's outer objective, the normalisation-statistics rule of every backend, Meta-Drop's
meta-mask settings, the LR schedule."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from conftest import fast_config
from prism.backbone import Backbone
from prism.batch import Batch
from prism.engine.builder import poly_schedule
from prism.engine.trainer import Trainer
from prism.errors import ConfigError
from prism.outputs import SegOutput
from prism.plugins.losses import dice_ce_loss
from prism.plugins.strategies.maml_backends import make_inner_loop
from prism.registry import get_registry, list_plugins

SGD = ["optim.name=sgd", "optim.momentum=0", "optim.weight_decay=0", "optim.grad_clip=null", "optim.lr=0.05"]


def flat(params):
    return torch.cat([p.detach().reshape(-1) for p in params])


@pytest.mark.slow
def test_maml_outer_objective_is_the_sum_of_the_task_query_losses(tiny_cache, tmp_path):
    cfg = fast_config("strategy.name=maml", "strategy.options={tasks_per_step: 2, inner_steps: 1, inner_lr: 0.1}",
                      "train.steps=1", *SGD, cache=tiny_cache)
    run = Trainer(cfg, tmp_path / "run", cache_path=tiny_cache)
    run.fit()
    ref = Trainer(cfg, tmp_path / "ref", cache_path=tiny_cache)  # same seeds: the same tasks and batches
    ctx, strategy = ref.ctx, ref.strategy
    params = ctx.parameters()
    theta = flat(params)
    total = torch.zeros_like(theta)
    for _ in range(2):
        task = strategy.sampler.sample(strategy.generator)
        support = strategy.sampler.batch(ctx, task, task.support_stream)
        query = strategy.sampler.batch(ctx, task, task.query_stream)
        # first order by hand: the query gradient at phi = theta - a grad L_support(theta)
        g_support = torch.autograd.grad(ctx.compute_loss(support)[0], params, allow_unused=True)
        with torch.no_grad():
            for p, g in zip(params, g_support, strict=True):
                if g is not None:
                    p -= 0.1 * g
        g_query = torch.autograd.grad(ctx.compute_loss(query)[0], params, allow_unused=True)
        total += flat([g if g is not None else torch.zeros_like(p) for p, g in zip(params, g_query, strict=True)])
        with torch.no_grad():  # a copy: vector_to_parameters makes the parameters views of its input
            torch.nn.utils.vector_to_parameters(theta.clone(), params)
    torch.testing.assert_close(flat(run.ctx.parameters()), theta - 0.05 * total, rtol=1e-4, atol=1e-6)
    assert not torch.allclose(flat(run.ctx.parameters()), theta - 0.05 * total / 2, rtol=1e-4, atol=1e-6)


def test_meta_drop_refuses_two_meta_mask_settings(tiny_cache, tmp_path):
    cfg = fast_config("strategy.name=meta_drop", "strategy.options={meta_masking: random}",
                      "masking.extra={meta: {name: full}}", cache=tiny_cache)
    with pytest.raises(ConfigError, match="meta_masking: conflicts with masking.extra.meta") as exc:
        Trainer(cfg, tmp_path, cache_path=tiny_cache)
    assert "meta-strategy 'meta_drop'" in str(exc.value)
    ok = fast_config("strategy.name=meta_drop", "strategy.options={meta_masking: random}", cache=tiny_cache)
    assert "meta" in Trainer(ok, tmp_path / "ok", cache_path=tiny_cache).ctx.masking_roles()


class BatchNormNet(Backbone):
    """Conv + BatchNorm: the one kind of normalisation with running statistics."""

    def __init__(self, modalities=("a", "b"), num_classes=2):
        super().__init__(modalities, num_classes)
        self.conv = nn.Conv3d(len(modalities), 4, 3, padding=1)
        self.norm = nn.BatchNorm3d(4)
        self.head = nn.Conv3d(4, num_classes, 1)

    def forward(self, image, mask):
        x = image * mask[:, :, None, None, None].to(image.dtype)
        return SegOutput(logits=self.head(torch.relu(self.norm(self.conv(x)))))


def _batch(seed: int) -> Batch:
    g = torch.Generator().manual_seed(seed)
    return Batch(image=torch.randn(2, 2, 6, 6, 6, generator=g) + 3.0,
                 label=torch.randint(0, 2, (2, 6, 6, 6), generator=g),
                 mask=torch.ones(2, 2, dtype=torch.bool), availability=torch.ones(2, 2, dtype=torch.bool))


@pytest.mark.parametrize("backend", ["torch", "higher"])
@pytest.mark.parametrize("first_order", [True, False])
def test_inner_loops_never_write_running_statistics(backend, first_order):
    torch.manual_seed(0)
    model = BatchNormNet().train()
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    inner = make_inner_loop(backend, model, inner_lr=0.1, learn_inner_lr=False, first_order=first_order)
    loss = inner.query_loss(_batch(1), _batch(2), lambda out, b: dice_ce_loss(out.logits, b.label), steps=2)
    loss.backward()
    assert model.conv.weight.grad is not None  # the meta-gradient reached the model
    for n, b in model.named_buffers():
        assert torch.equal(b, buffers[n]), f"{backend}: inner loop wrote {n}"
    model(_batch(3).image, _batch(3).mask)  # an ordinary train-mode forward does update them (the test can fail)
    assert not torch.equal(model.norm.running_mean, buffers["norm.running_mean"])


def test_poly_schedule_is_the_closed_form():
    p = [nn.Parameter(torch.zeros(1))]
    opt = torch.optim.SGD(p, lr=0.2)
    sched = poly_schedule(opt, 8, 0.9)
    for step in range(10):
        assert opt.param_groups[0]["lr"] == pytest.approx(0.2 * max(0.0, 1 - step / 8) ** 0.9, abs=1e-12)
        opt.step()
        sched.step()


def test_builtin_strategies_import_only_contract_modules():
    """The same rule the import-linter contract enforces in CI, readable here without an install step."""
    import ast
    import inspect

    allowed = {"prism.strategy", "prism.adapt", "prism.loss", "prism.backbone", "prism.outputs", "prism.batch",
               "prism.masking",
               "prism.modalities", "prism.errors", "prism.registry"}
    for name in list_plugins("strategy"):
        module = inspect.getmodule(get_registry().get("strategy", name).factory)
        tree = ast.parse(inspect.getsource(module))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("prism."):
                if not node.module.startswith("prism.plugins"):
                    assert node.module in allowed, f"{module.__name__} imports {node.module}"
