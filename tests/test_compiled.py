"""train.compile (model / step) and train.cuda_graphs: refusals on CPU, and the compiled step equals the eager one."""

from __future__ import annotations

import pytest
import torch

from conftest import fast_config
from prism.config import build_config
from prism.engine.compiled import compile_mode
from prism.engine.trainer import Trainer
from prism.errors import ConfigError


def test_compile_field_accepts_modes_and_keeps_true_meaning_model():
    assert compile_mode(build_config(None, ["train.compile=true"]).train.compile) == "model"
    assert compile_mode(build_config(None, ["train.compile=model"]).train.compile) == "model"
    assert compile_mode(build_config(None, ["train.compile=step"]).train.compile) == "step"
    assert compile_mode(build_config(None, []).train.compile) is None
    with pytest.raises(ConfigError, match="train.compile"):
        build_config(None, ["train.compile=graph"])


@pytest.mark.parametrize("overrides,message", [
    (["train.cuda_graphs=true"], "train.cuda_graphs: needs a CUDA device"),
    (["train.compile=step", "strategy.name=maml"], "train.compile: refused with strategy 'maml'"),
    (["train.cuda_graphs=true", "strategy.name=maml"], "train.cuda_graphs: refused with strategy 'maml'"),
])
def test_refusals_are_one_line_config_errors(tiny_cache, tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message) as info:
        Trainer(fast_config(*overrides, "train.device=cpu", cache=tiny_cache), tmp_path / "run", cache_path=tiny_cache)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "run").exists()


def _two_steps(cache, run_dir, *overrides):
    torch.manual_seed(0)
    trainer = Trainer(fast_config("train.device=cpu", "model.name=multi_unet", "model.options.depth=2",
                                  "train.channels_last=false", "data.batch_size=1", *overrides, cache=cache),
                      run_dir, cache_path=cache)
    losses = [float(trainer.strategy.step(trainer.ctx)["loss"]) for _ in range(2)]
    params = {k: v.detach().clone() for k, v in trainer.ctx.model.state_dict().items()}
    trainer.ctx.streams.close()
    trainer.close()
    return trainer, losses, params


@pytest.mark.slow
def test_compiled_step_equals_eager_step(tiny_cache, tmp_path):
    _, eager_losses, eager = _two_steps(tiny_cache, tmp_path / "eager")
    trainer, losses, compiled = _two_steps(tiny_cache, tmp_path / "step", "train.compile=step")
    assert trainer.ctx.forward_loss is not trainer.ctx.eager_forward_loss
    assert hasattr(trainer.ctx.forward_loss, "_torchdynamo_orig_callable")  # really compiled
    torch.testing.assert_close(losses, eager_losses, rtol=1e-4, atol=1e-5)
    assert eager.keys() == compiled.keys()
    for k in eager:
        torch.testing.assert_close(compiled[k], eager[k], rtol=1e-3, atol=1e-5, msg=k)


def _fake_ctx(**over):
    from types import SimpleNamespace

    from prism.engine.distributed import DistInfo
    from prism.engine.losses import LossSet, WeightedTerm
    from prism.modalities import BRATS_MODALITIES
    from prism.registry import create_loss

    terms = [WeightedTerm("fuse", 1.0, create_loss("fuse", BRATS_MODALITIES, 4))]
    if over.pop("preference", False):
        terms.append(WeightedTerm("prism", 1.0, create_loss("prism", BRATS_MODALITIES, 4, preference=True)))
    base = dict(device=torch.device("cuda"), dist=DistInfo(), scaler=None, losses=LossSet(terms))
    return SimpleNamespace(**{**base, **over})


@pytest.mark.parametrize("config_over,ctx_over,reason", [
    ([], {}, None),
    ([], {"device": torch.device("cpu")}, "needs a CUDA device"),
    (["strategy.name=meta_drop"], {}, "captures the standard step only"),
    ([], {"scaler": object()}, "fp16 loss scaling"),
    ([], {"preference": True}, "loss term(s) prism keep statistics"),
])
def test_cuda_graph_refusal_reasons(config_over, ctx_over, reason):
    from prism.engine.compiled import cuda_graph_refusal

    got = cuda_graph_refusal(build_config(None, config_over), _fake_ctx(**ctx_over))
    assert (got is None) if reason is None else (reason in got)


@pytest.mark.parametrize("name", ["adamw", "sgd"])
@pytest.mark.parametrize("state_before", [False, True])
def test_cuda_graph_warmup_is_undone_in_place(name, state_before):
    """What CudaGraphStep does between its warm-up steps and the capture (on any device): parameters and the
    optimizer state return to their values in the same tensors, and state created by the warm-up starts fresh,
    so the next update equals the eager run's."""
    from types import SimpleNamespace

    from prism.engine.builder import build_optimizer
    from prism.engine.compiled import CudaGraphStep

    cfg = build_config(None, [f"optim.name={name}", "optim.lr=0.1"])

    def setup():
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.GroupNorm(2, 4))
        return model, build_optimizer(cfg, model, capturable=True)

    def update(model, opt, seed):
        opt.zero_grad(set_to_none=True)
        model(torch.randn(5, 3, generator=torch.Generator().manual_seed(seed))).square().sum().backward()
        opt.step()

    eager_model, eager_opt = setup()
    model, opt = setup()
    if state_before:
        update(eager_model, eager_opt, 1)
        update(model, opt, 1)
    step = CudaGraphStep(SimpleNamespace(model=model, optimizer=opt))
    model_state = {k: v.clone() for k, v in model.state_dict().items()}
    optim_state = {p: {k: v.clone() for k, v in st.items() if torch.is_tensor(v)} for p, st in opt.state.items()}
    tensors = {id(v) for st in opt.state.values() for v in st.values()} | {id(p) for p in model.parameters()}
    for seed in (7, 8):  # the warm-up: real updates
        update(model, opt, seed)
    step._restore(model_state, optim_state)
    now = {id(v) for st in opt.state.values() for v in st.values()} | {id(p) for p in model.parameters()}
    if state_before:  # the same tensors (a captured graph reads them by address)
        assert tensors <= now
    else:  # state exists before the capture (created inside it, it would be re-zeroed on every replay), and is zero
        assert len(opt.state) == len(list(model.parameters()))
        assert all(not v.any() for st in opt.state.values() for v in st.values() if torch.is_tensor(v))
    update(model, opt, 2)
    update(eager_model, eager_opt, 2)
    for a, b in zip(model.parameters(), eager_model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
