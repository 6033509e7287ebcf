"""Availability from PASSION CSVs and mrABCD names, drawn availability, case lists and splits."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import PASSION_FIXTURES as PASSION
from prism.data.availability import (
    draw_availability,
    missing_rates_from_name,
    parse_bool_list,
    parse_missing_rates,
    read_passion_csv,
)
from prism.data.splits import read_case_list, resolve_case_names, splits_from_lists
from prism.errors import DataError

MODS = ("flair", "t1ce", "t1", "t2")


def test_mr_name_gives_rates_in_passion_order():
    assert missing_rates_from_name("Brats2020_imb_split_mr2468.csv") == {"t1": 0.2, "t1ce": 0.4, "flair": 0.6,
                                                                          "t2": 0.8}
    with pytest.raises(DataError, match="no 'mrABCD'"):
        missing_rates_from_name("split.csv")


@pytest.mark.parametrize("name", ["Brats2020_imb_split_mr2468.csv", "Brats2020_imb_split_mr1379.csv"])
def test_passion_csv_masks_match_their_file_name(name):
    table = read_passion_csv(PASSION / name, MODS)
    assert len(table) == 219 and "HG_BraTS20_Training_002" in table
    assert table["HG_BraTS20_Training_002"] == (True, True, True, False)  # first row, read by hand
    observed = 1 - np.array(list(table.values())).mean(0)
    expected = missing_rates_from_name(name)
    for m, rate in zip(MODS, observed, strict=True):
        assert abs(rate - expected[m]) < 0.08, (m, rate, expected[m])


def test_passion_csv_reorders_to_dataset_channels():
    other = ("t1", "t2", "flair", "t1ce")
    table = read_passion_csv(PASSION / "Brats2020_imb_split_mr2468.csv", other)
    assert table["HG_BraTS20_Training_002"] == (True, False, True, True)


def test_bool_lists_are_parsed_without_eval(tmp_path):
    assert parse_bool_list("[True, false, 1, 0]") == [True, False, True, False]
    with pytest.raises(DataError, match="not a list of True/False"):
        parse_bool_list("[__import__('os')]", where="x.csv:2")
    bad = tmp_path / "bad.csv"
    bad.write_text('data_name,mask_id,mask,pos_mask_ids\ncase1,0,"[True, False]",[0]\n')
    with pytest.raises(DataError, match=r"bad.csv:2: case case1: mask must have 4 entries"):
        read_passion_csv(bad, MODS)


def test_drawn_availability_is_seeded_and_never_empty():
    ids = [f"c{i:03d}" for i in range(400)]
    rates = parse_missing_rates("mr2468", MODS)
    a = draw_availability(ids, rates, MODS, seed=5)
    assert a == draw_availability(list(reversed(ids)), rates, MODS, seed=5)
    assert a != draw_availability(ids, rates, MODS, seed=6)
    matrix = np.array(list(a.values()))
    assert matrix.any(1).all()
    assert abs((1 - matrix[:, 2].mean()) - 0.2) < 0.07 and abs((1 - matrix[:, 3].mean()) - 0.8) < 0.1
    assert parse_missing_rates("flair=0.5", MODS) == {"flair": 0.5, "t1ce": 0.0, "t1": 0.0, "t2": 0.0}
    with pytest.raises(DataError, match="unknown modalities"):
        parse_missing_rates("adc=0.5", MODS)


def test_case_lists_and_name_resolution(tmp_path):
    lst = tmp_path / "test.txt"
    lst.write_text("# test cases\nHG_BraTS20_Training_001\n\ndata/BraTS20_Training_003.npy\n")
    known = [f"BraTS20_Training_{i:03d}" for i in range(1, 6)]
    assert read_case_list(lst) == ["HG_BraTS20_Training_001", "BraTS20_Training_003"]
    splits = splits_from_lists({"test": lst}, known)
    assert splits == {"test": ["BraTS20_Training_001", "BraTS20_Training_003"],
                      "train": ["BraTS20_Training_002", "BraTS20_Training_004", "BraTS20_Training_005"]}
    with pytest.raises(DataError, match=r"names unknown cases: BraTS20_Training_099"):
        resolve_case_names(["BraTS20_Training_099"], known, source="x.txt")
