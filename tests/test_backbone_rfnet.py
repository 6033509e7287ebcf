"""RFNet specifics: per-modality paths are the fusion decoder under single-modality masks; the separate decoder."""

from __future__ import annotations

import pytest
import torch

from prism.batch import Batch
from prism.errors import PluginError
from prism.modalities import BRATS_MODALITIES
from prism.registry import create_backbone, create_loss


def tiny(**kw):
    torch.manual_seed(0)
    return create_backbone("rfnet", BRATS_MODALITIES, 3, width=4, depth=3, **kw)


def test_uni_path_equals_the_fusion_decoder_run_with_that_modality_alone():
    model = tiny().train()
    x = torch.randn(2, 4, 16, 16, 16)
    mask = torch.tensor([[True, True, False, True], [False, True, True, False]])
    with torch.no_grad():
        out = model(x, mask)
        model.request_parts({"logits"})  # the fused path only, run once per single-modality mask
        for i in range(4):
            solo = torch.zeros_like(mask)
            solo[:, i] = mask[:, i]
            alone = model(x, solo)
            torch.testing.assert_close(out.uni[:, i], alone.logits, rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(out.uni_deep[0][:, i], alone.deep[0], rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(out.uni_features[:, i], alone.features, rtol=1e-4, atol=1e-5)


def test_separate_decoder_output_and_its_loss_term():
    model = tiny().train()
    x, mask = torch.randn(2, 4, 16, 16, 16), torch.tensor([[True, False, True, True], [True, True, True, True]])
    out = model(x, mask)
    assert out.sep.shape == (2, 4, 3, 16, 16, 16)
    assert model.extra_loss_terms == ("rfnet_sep",)
    batch = Batch(image=x, label=torch.randint(0, 3, (2, 16, 16, 16)), mask=mask, availability=mask)
    result = create_loss("rfnet_sep", BRATS_MODALITIES, 3)(out, batch)
    assert result.total.dim() == 0 and result.total > 0
    assert result.parts["rfnet_sep/t1ce"] > 0  # available in sample 2
    result.total.backward()
    assert model.separate.heads[0].weight.grad.abs().sum() > 0


def test_without_separate_decoder_the_term_says_what_is_missing():
    model = tiny(separate_decoder=False).train()
    x, mask = torch.randn(1, 4, 16, 16, 16), torch.ones(1, 4, dtype=torch.bool)
    out = model(x, mask)
    assert out.sep is None and model.extra_loss_terms == ()
    batch = Batch(image=x, label=torch.zeros(1, 16, 16, 16, dtype=torch.long), mask=mask, availability=mask)
    with pytest.raises(PluginError, match="rfnet_sep.*separate_decoder=True"):
        create_loss("rfnet_sep", BRATS_MODALITIES, 3)(out, batch)
