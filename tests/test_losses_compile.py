"""The loss path traces into one graph (torch.compile, fullgraph) with its stateful parts updated as in eager."""

from __future__ import annotations

import pytest
import torch
from test_losses_batched import MODS, K, make
from test_losses_passion import preset_options

from prism.loss import observation
from prism.registry import create_loss

CASES = {"seeds+preference+gss": {"preference": True, "gss": True, "separate": True},
         "passion preset": "passion_brats2020_mr2468"}


@pytest.mark.parametrize("case", sorted(CASES))
def test_prism_loss_compiles_without_graph_breaks_and_records_like_eager(case):
    options = CASES[case]
    options = preset_options(options) if isinstance(options, str) else options
    out, batch = make(seed=7)
    eager, compiled = create_loss("prism", MODS, K, **options), create_loss("prism", MODS, K, **options)
    torch._dynamo.reset()
    step = torch.compile(lambda o, b: compiled(o, b).total, backend="eager", fullgraph=True)
    for _ in range(2):
        torch.testing.assert_close(step(out, batch), eager(out, batch).total)
    with observation(False):  # an auxiliary batch: nothing recorded, in either mode
        step(out, batch)
        eager(out, batch)
    before_e, before_c = eager.state_dict()["preference"], compiled.state_dict()["preference"]
    expected_count = (2 * batch.mask.sum(0).float()).tolist()  # two observed calls; the third is not recorded
    assert before_c["rp_count"] == before_e["rp_count"] == expected_count
    assert before_c["rp_sum"] == pytest.approx(before_e["rp_sum"], abs=1e-6)
    eager.on_epoch_end()
    compiled.on_epoch_end()
    after_e, after_c = eager.state_dict()["preference"], compiled.state_dict()["preference"]
    assert after_c["coefficients"] == pytest.approx(after_e["coefficients"], abs=1e-6)
    assert after_e["coefficients"] != before_e["coefficients"]
    torch._dynamo.reset()
