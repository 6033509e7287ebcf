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
