"""Meta-transfer learning (scale/shift on frozen convolutions) and the fast-weight generator."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from conftest import fast_config
from prism.backbone import Backbone
from prism.batch import Batch
from prism.engine.trainer import Trainer
from prism.errors import CheckpointError, ConfigError
from prism.modalities import BRATS_MODALITIES
from prism.outputs import SegOutput
from prism.plugins.losses import dice_ce_loss
from prism.plugins.strategies.channel_affine import convolutions
from prism.plugins.strategies.fast_weights import GENERATOR, class_prototypes
from prism.registry import create_backbone, get_registry, list_plugins


def _strategy(name, **options):
    return get_registry().create("strategy", name, **options)


@pytest.mark.parametrize("backbone", list_plugins("backbone"))
def test_meta_transfer_wraps_every_backbone_without_changing_its_function(backbone):
    torch.manual_seed(0)
    model = create_backbone(backbone, BRATS_MODALITIES, 4, width=4, depth=3)
    model.eval()
    size = model.size_divisor * max(1, 16 // model.size_divisor)
    image, mask = torch.randn(1, 4, size, size, size), torch.tensor([[True, False, True, True]])
    with torch.no_grad():
        before = model(image, mask).logits
    head = set(model.head_parameter_names())
    prepared = _strategy("meta_transfer").prepare_model(model)
    trainable = {n for n, p in prepared.named_parameters() if p.requires_grad}
    ss = {n for n in trainable if n.endswith((".ss_scale", ".ss_shift"))}
    assert trainable == ss | head  # frozen weights: only scale/shift and the head train
    assert len(ss) == 2 * len(convolutions(prepared))  # every convolution wrapped
    with torch.no_grad():
        torch.testing.assert_close(prepared(image, mask).logits, before)  # scale 1, shift 0: the same network
        for n, p in prepared.named_parameters():
            if n.endswith(".ss_scale"):
                p.fill_(2.0)
        assert not torch.allclose(prepared(image, mask).logits, before)


def test_scale_shift_is_the_papers_formula():
    conv = nn.Conv3d(2, 3, 3, padding=1)
    x = torch.randn(1, 2, 5, 5, 5)
    model = nn.Sequential(conv)
    from prism.plugins.strategies.channel_affine import add_scale_shift

    add_scale_shift(model)
    with torch.no_grad():
        conv.ss_scale.copy_(torch.tensor([0.5, 2.0, -1.0]))
        conv.ss_shift.copy_(torch.tensor([0.1, 0.0, 3.0]))
        expected = nn.functional.conv3d(x, conv.weight * conv.ss_scale.view(3, 1, 1, 1, 1),
                                        conv.bias + conv.ss_shift, padding=1)
        torch.testing.assert_close(model(x), expected)


@pytest.mark.slow
def test_meta_transfer_from_a_trained_run_trains_only_scale_shift_and_head(tiny_cache, tmp_path):
    base = Trainer(fast_config("train.steps=2", cache=tiny_cache), tmp_path / "base", cache_path=tiny_cache)
    base.fit()
    trained = {n: p.detach().clone() for n, p in base.ctx.model.named_parameters()}
    cfg = fast_config("strategy.name=meta_transfer", f"model.init_from={tmp_path / 'base'}", "train.steps=2",
                      cache=tiny_cache)
    mtl = Trainer(cfg, tmp_path / "mtl", cache_path=tiny_cache)
    head = set(mtl.ctx.model.head_parameter_names())
    for n, p in mtl.ctx.model.named_parameters():
        if n in trained:
            assert torch.equal(p, trained[n]), f"{n}: init_from not loaded"
    mtl.fit()
    for n, p in mtl.ctx.model.named_parameters():
        if n in trained and n not in head:
            assert torch.equal(p, trained[n]), f"{n}: frozen weight changed"
    assert any(not torch.equal(p, trained[n]) for n, p in mtl.ctx.model.named_parameters() if n in head)
    moved = [n for n, p in mtl.ctx.model.named_parameters() if n.endswith("ss_scale") and not (p == 1).all()]
    assert moved  # scale/shift were meta-trained
    bad = fast_config("strategy.name=meta_transfer", f"model.init_from={tmp_path / 'nothing'}", cache=tiny_cache)
    with pytest.raises(CheckpointError, match="model.init_from: .*nothing.*no checkpoint"):
        Trainer(bad, tmp_path / "bad", cache_path=tiny_cache)


class Tiny(Backbone):
    """conv -> features (2 channels) -> 1x1 head: enough structure for prototypes and FiLM, in float64."""

    provides = frozenset({"logits", "features"})
    head_patterns = ("head.*",)

    def __init__(self, modalities=("a",), num_classes=2):
        super().__init__(modalities, num_classes)
        self.conv = nn.Conv3d(len(modalities), 2, 1).double()
        self.head = nn.Conv3d(2, num_classes, 1).double()

    def forward(self, image, mask):
        features = torch.tanh(self.conv(image * mask[:, :, None, None, None].to(image.dtype)))
        return SegOutput(logits=self.head(features), features=features)


def _batch(seed: int) -> Batch:
    g = torch.Generator().manual_seed(seed)
    return Batch(image=torch.randn(2, 1, 3, 3, 3, generator=g, dtype=torch.float64),
                 label=torch.randint(0, 2, (2, 3, 3, 3), generator=g),
                 mask=torch.ones(2, 1, dtype=torch.bool), availability=torch.ones(2, 1, dtype=torch.bool))


def _prepared(hidden=3):
    torch.manual_seed(1)
    strategy = _strategy("fast_weights", hidden=hidden)
    model = strategy.prepare_model(Tiny()).double()
    with torch.no_grad():  # leave the identity start so that the output depends on the input
        getattr(model, GENERATOR).out.weight.normal_(0, 0.5)
    return strategy, model


def test_class_prototypes_by_hand():
    features = torch.tensor([[[1.0, 2.0, 3.0, 4.0]], [[5.0, 6.0, 7.0, 8.0]]]).view(2, 1, 1, 1, 4)
    label = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 0]]).view(2, 1, 1, 4)
    protos = class_prototypes(features, label, 3)
    torch.testing.assert_close(protos, torch.tensor([[(1 + 2 + 8) / 3], [(3 + 4 + 5 + 6 + 7) / 5], [0.0]]))


def test_generated_weights_change_with_the_support_set():
    strategy, model = _prepared()
    a = strategy.adapt(model, [_batch(1)], lambda o, b: dice_ce_loss(o.logits, b.label))
    b = strategy.adapt(model, [_batch(2)], lambda o, b: dice_ce_loss(o.logits, b.label))
    assert set(a) == {"head.film_gamma", "head.film_beta"}
    assert not torch.allclose(a["head.film_gamma"], b["head.film_gamma"])
    assert (model.head.film_gamma == 0).all()  # the model keeps the identity


def test_generator_meta_gradient_matches_finite_differences():
    strategy, model = _prepared()
    support, query = _batch(3), _batch(4)
    loss_fn = lambda o, b: nn.functional.cross_entropy(o.logits, b.label)  # noqa: E731  (float64 throughout)
    from prism.adapt import functional_forward

    def query_loss() -> torch.Tensor:
        rho = strategy.generate(model, [functional_forward(model, {}, support)], [support])
        return loss_fn(functional_forward(model, rho, query), query)

    params = [p for n, p in model.named_parameters() if n.startswith(GENERATOR)]
    grads = torch.autograd.grad(query_loss(), params)
    eps = 1e-6
    matrices = [(p, g) for p, g in zip(params, grads, strict=True) if p.dim() == 2]
    for p, g in matrices:  # every layer's weights: the chain through features, prototypes, MLP and FiLM
        for index in [(0, 0), (1, 2)]:
            with torch.no_grad():
                p[index] += eps
                up = query_loss().item()
                p[index] -= 2 * eps
                down = query_loss().item()
                p[index] += eps
            assert g[index].item() == pytest.approx((up - down) / (2 * eps), rel=1e-5, abs=1e-9)


def test_fast_weights_needs_features():
    class LogitsOnly(Tiny):
        provides = frozenset({"logits"})

    with pytest.raises(ConfigError, match="fast_weights reads the backbone's 'features'"):
        _strategy("fast_weights").prepare_model(LogitsOnly())


@pytest.mark.parametrize("backbone", list_plugins("backbone"))
def test_fast_weights_prepares_every_backbone_that_has_features(backbone):
    model = create_backbone(backbone, BRATS_MODALITIES, 4)  # default depth: the sizing probe must fit it
    if "features" not in type(model).provides:
        with pytest.raises(ConfigError):
            _strategy("fast_weights").prepare_model(model)
        return
    prepared = _strategy("fast_weights").prepare_model(model)
    generator = getattr(prepared, GENERATOR)
    assert sum(generator.sizes) == 2 * sum(prepared.get_submodule(n.rsplit(".", 1)[0]).in_channels
                                           for n in generator.names[::2])
