import csv
import re

import pytest
import torch

from conftest import PASSION_FIXTURES
from prism.modalities import BRATS_MODALITIES, combination_index, combination_masks, enumerate_combinations

PASSION_NAMES = [
    "T2", "T1ce", "T1", "FLAIR", "T1ce+T2", "T1ce+T1", "FLAIR+T1", "T1+T2", "FLAIR+T2", "FLAIR+T1ce",
    "FLAIR+T1ce+T1", "FLAIR+T1+T2", "FLAIR+T1ce+T2", "T1ce+T1+T2", "FLAIR+T1ce+T1+T2",
]


def test_brats_report_order_matches_passion_reports():
    combos = enumerate_combinations(BRATS_MODALITIES)
    assert [c.name for c in combos] == PASSION_NAMES
    assert [c.index for c in combos] == list(range(15))


def test_order_is_by_name_not_channel_position():
    shaspec_order = ("flair", "t1", "t1ce", "t2")  # ShaSpec stores channels in another order
    combos = enumerate_combinations(shaspec_order)
    assert [c.name for c in combos] == ["T2", "T1ce", "T1", "FLAIR", "T1ce+T2", "T1+T1ce", "FLAIR+T1", "T1+T2",
                                        "FLAIR+T2", "FLAIR+T1ce", "FLAIR+T1+T1ce", "FLAIR+T1+T2", "FLAIR+T1ce+T2",
                                        "T1+T1ce+T2", "FLAIR+T1+T1ce+T2"]
    assert combos[1].mask == (False, False, True, False)  # T1ce is channel 2 here


def test_generic_modalities_order_by_size():
    combos = enumerate_combinations(("ct", "pet"))
    assert [c.members for c in combos] == [("ct",), ("pet",), ("ct", "pet")]


def test_masks_tensor_and_index_roundtrip():
    masks = combination_masks(BRATS_MODALITIES)
    assert masks.shape == (15, 4) and masks.dtype == torch.bool
    assert masks.any(1).all() and len({tuple(m.tolist()) for m in masks}) == 15
    for i, m in enumerate(masks):
        assert combination_index(BRATS_MODALITIES, m) == i
    with pytest.raises(ValueError):
        combination_index(BRATS_MODALITIES, [False] * 4)


@pytest.mark.parametrize("name", ["Brats2020_imb_split_mr2468.csv", "Brats2018_imb_split_mr2468.csv"])
def test_indices_agree_with_passion_split_csvs(name):
    """PASSION's pos_mask_ids are the combinations whose modalities the case has: same indices as ours."""
    path = PASSION_FIXTURES / name
    masks = combination_masks(BRATS_MODALITIES)  # [FLAIR, T1ce, T1, T2], PASSION's CSV order
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert rows
    for row in rows:
        case_mask = torch.tensor([v == "True" for v in re.findall(r"True|False", row["mask"])])
        expected = sorted(int(v) for v in re.findall(r"\d+", row["pos_mask_ids"]))
        subsets = [i for i in range(15) if not (masks[i] & ~case_mask).any()]
        assert subsets == expected, row["data_name"]
        assert combination_index(BRATS_MODALITIES, case_mask) == int(row["mask_id"])
