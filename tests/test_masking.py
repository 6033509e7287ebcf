"""Every registered masking policy through the conformance kit's suite (``prism.testing.check_masking_policy``),
and the ``random`` policy's distribution."""

import pytest
import torch

from prism.modalities import BRATS_MODALITIES
from prism.registry import create_masking_policy, list_plugins
from prism.testing import MASKING_CHECKS, check_masking_policy

#: options a policy needs to be built (the others take none)
OPTIONS = {"fixed": {"combination": "flair+t1ce+t1+t2"}}


@pytest.mark.parametrize("name", list_plugins("masking"))
def test_masking_policy_passes_the_conformance_suite(name):
    report = check_masking_policy(name, options=OPTIONS.get(name))
    assert report.passed == list(MASKING_CHECKS)


def test_random_policy_reaches_every_allowed_combination():
    policy = create_masking_policy("random", BRATS_MODALITIES)
    availability = torch.tensor([[True, True, True, True], [False, True, False, True], [True, False, False, False]])
    g = torch.Generator().manual_seed(0)
    seen = [set(), set(), set()]
    for _ in range(300):
        mask = policy(availability, g)
        for i in range(3):
            seen[i].add(tuple(mask[i].tolist()))
    assert [len(s) for s in seen] == [15, 3, 1]  # 2^4 - 1, 2^2 - 1 and 1 non-empty subsets


def test_random_policy_is_uniform_over_combinations():
    policy = create_masking_policy("random", BRATS_MODALITIES)
    g = torch.Generator().manual_seed(1)
    masks = policy(torch.ones(15000, 4, dtype=torch.bool), g)
    counts = torch.unique(masks, dim=0, return_counts=True)[1]
    assert len(counts) == 15 and counts.min() > 850 and counts.max() < 1150  # ~1000 each


def test_a_case_without_any_modality_is_refused():
    policy = create_masking_policy("random", BRATS_MODALITIES)
    with pytest.raises(ValueError, match="no available modality"):
        policy(torch.zeros(1, 4, dtype=torch.bool), torch.Generator())
