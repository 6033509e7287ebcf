"""``train.compile: step`` traces the step once: no attribute, tensor or shape is created on a first call.

Each built-in strategy that allows compiling runs 5 steps with the step's forward and losses compiled through a
backend that counts the graphs dynamo hands it (``torch._dynamo.testing.CompileCounter``, which then runs them
eagerly, so no code is generated): a recompilation or a graph break would hand it a second graph.
"""

from __future__ import annotations

import functools

import pytest
import torch
from torch._dynamo.testing import CompileCounter

import prism.engine.compiled as compiled
from conftest import fast_config
from prism.engine.trainer import Trainer
from prism.registry import get_registry


def compilable_strategies() -> list[str]:
    return sorted(e.name for e in get_registry().entries("strategy")
                  if e.distribution == "prism-seg" and not getattr(e.factory, "compile_refusal", None))


#: the built-in strategies that do not refuse compiling (MAML's lineage runs functional inner loops)
COMPILABLE = ["meta_drop", "reptile", "standard"]


def test_the_compiled_strategies_are_every_builtin_one_that_allows_it():
    assert compilable_strategies() == COMPILABLE


@pytest.mark.slow
@pytest.mark.parametrize("strategy", COMPILABLE)
def test_five_compiled_steps_trace_one_graph(tiny_cache, tmp_path, monkeypatch, strategy):
    counter = CompileCounter()
    monkeypatch.setattr(compiled, "compiled_forward_loss",
                        functools.partial(compiled.compiled_forward_loss, backend=counter))
    torch._dynamo.reset()
    config = fast_config("train.device=cpu", "model.name=multi_unet", "model.options.depth=2", "data.batch_size=1",
                         "train.channels_last=false", "train.compile=step", f"strategy.name={strategy}",
                         "losses=[{name: prism, options: {preference: true, gss: true}}]", cache=tiny_cache)
    trainer = Trainer(config, tmp_path / "run", cache_path=tiny_cache)
    try:
        for _ in range(5):
            result = trainer.strategy.step(trainer.ctx)
        assert torch.isfinite(result["loss"])
    finally:
        trainer.ctx.streams.close()
        trainer.close()
        torch._dynamo.reset()
    assert counter.frame_count == 1, f"{strategy}: {counter.frame_count} graphs traced over 5 steps"
