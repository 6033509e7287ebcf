"""M2FTrans's attention mask, against a loop-built reference."""

from __future__ import annotations

import torch

from prism.plugins.backbones.m2ftrans import fusion_token_mask


def reference(mask: torch.Tensor, n: int) -> torch.Tensor:
    b, m = mask.shape
    owner = [None] * n + [i for i in range(m) for _ in range(n)]  # None: a fusion token
    t = len(owner)
    out = torch.zeros(b, 1, t, t, dtype=torch.bool)
    for s in range(b):
        for q in range(t):
            for k in range(t):
                key_ok = owner[k] is None or bool(mask[s, owner[k]])
                pair_ok = owner[q] is None or owner[k] is None or owner[q] == owner[k]
                out[s, 0, q, k] = key_ok and pair_ok
    return out


def test_fusion_token_mask_matches_a_loop_built_reference():
    mask = torch.tensor([[True, False, True, True], [False, False, True, False]])
    assert torch.equal(fusion_token_mask(mask, 2), reference(mask, 2))


def test_every_query_has_a_key_so_attention_never_divides_by_zero():
    mask = torch.tensor([[False, False, False, True]])
    assert fusion_token_mask(mask, 3).any(-1).all()
