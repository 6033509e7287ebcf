import pytest
import torch

from prism.modalities import BRATS_MODALITIES
from prism.registry import create_masking_policy


def test_random_policy_draws_non_empty_subsets_of_availability():
    policy = create_masking_policy("random", BRATS_MODALITIES)
    availability = torch.tensor([[True, True, True, True], [False, True, False, True], [True, False, False, False]])
    g = torch.Generator().manual_seed(0)
    seen = [set(), set(), set()]
    for _ in range(300):
        mask = policy(availability, g)
        assert mask.dtype == torch.bool and mask.shape == (3, 4)
        assert mask.any(1).all() and not (mask & ~availability).any()
        for i in range(3):
            seen[i].add(tuple(mask[i].tolist()))
    assert [len(s) for s in seen] == [15, 3, 1]  # every allowed combination shows up


def test_random_policy_is_uniform_over_combinations():
    policy = create_masking_policy("random", BRATS_MODALITIES)
    g = torch.Generator().manual_seed(1)
    masks = policy(torch.ones(15000, 4, dtype=torch.bool), g)
    counts = torch.unique(masks, dim=0, return_counts=True)[1]
    assert len(counts) == 15 and counts.min() > 850 and counts.max() < 1150  # ~1000 each


def test_random_policy_is_reproducible_from_the_generator():
    policy = create_masking_policy("random", BRATS_MODALITIES)
    a = policy(torch.ones(8, 4, dtype=torch.bool), torch.Generator().manual_seed(5))
    b = policy(torch.ones(8, 4, dtype=torch.bool), torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="no available modality"):
        policy(torch.zeros(1, 4, dtype=torch.bool), torch.Generator())
