"""PASSION availability CSVs: mask_id and pos_mask_ids checked against mask, unlisted training cases, and the
CSV's content in the cache provenance (an edit rebuilds)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from conftest import PASSION_FIXTURES as PASSION
from prism.data.availability import read_passion_csv
from prism.data.cache_reader import CacheReader
from prism.data_tools.layouts import BRATS2020
from prism.data_tools.preprocess import PreprocessSettings, build_cache
from prism.data_tools.synthetic import SynthSettings, write_synthetic_nifti
from prism.errors import DataError

HEADER = "data_name,mask_id,mask,pos_mask_ids\n"
# The 15 combinations in PASSION's report order (the result tables of Shi et al., ACM MM 2024, and the
# pos_mask_ids of the PASSION repository's datasets/BraTS CSVs)
ORDER = ["T2", "T1ce", "T1", "FLAIR", "T1ce+T2", "T1ce+T1", "FLAIR+T1", "T1+T2", "FLAIR+T2", "FLAIR+T1ce",
         "FLAIR+T1ce+T1", "FLAIR+T1+T2", "FLAIR+T1ce+T2", "T1ce+T1+T2", "FLAIR+T1ce+T1+T2"]
MASK_NAMES = ("FLAIR", "T1ce", "T1", "T2")  # a PASSION mask's order


def _members(text: str) -> frozenset[str]:
    return frozenset(text.split("+"))


@pytest.mark.parametrize("name", sorted(p.name for p in PASSION.glob("*.csv")))
def test_real_passion_csvs_agree_with_an_independent_reading(name):
    rows = list(csv.DictReader(open(PASSION / name, newline="")))
    table = read_passion_csv(PASSION / name)  # raises on any disagreement
    assert len(table) == len(rows)
    for row in rows:
        mask = [t.strip() == "True" for t in row["mask"].strip("[]").split(",")]
        have = frozenset(n for n, v in zip(MASK_NAMES, mask, strict=True) if v)
        assert ORDER.index("+".join(n for n in MASK_NAMES if n in have)) == int(row["mask_id"])
        subsets = [i for i, c in enumerate(ORDER) if _members(c) <= have]
        assert [int(t) for t in row["pos_mask_ids"].strip("[]").split(",")] == subsets


@pytest.mark.parametrize("row, message", [
    ('c1,3,"[False, True, False, False]",[1]', r"x\.csv:2: case c1: mask_id 3 \(flair\) disagrees with mask "
                                               r"\(t1ce, mask_id 1\)"),
    ('c1,1,"[False, True, False, False]","[1, 3]"', r"x\.csv:2: case c1: pos_mask_ids \[1, 3\] disagree with mask"),
    ('c1,10,"[True, True, True, False]","[1, 2, 3]"', r"x\.csv:2: case c1: pos_mask_ids \[1, 2, 3\] disagree"),
    ('c1,15,"[True, True, True, True]",[14]', r"x\.csv:2: case c1: mask_id 15 \(no combination\) disagrees"),
    ('c1,one,"[True, True, True, True]",[14]', r"x\.csv:2: case c1: mask_id 'one' is not an integer"),
    ('c1,0,"[False, False, False, True]",[zero]', r"x\.csv:2: case c1: '\[zero\]' is not a list of integers"),
])
def test_disagreeing_ids_name_the_row(tmp_path, row, message):
    bad = tmp_path / "x.csv"
    bad.write_text(HEADER + row + "\n")
    with pytest.raises(DataError, match=message):
        read_passion_csv(bad)


@pytest.mark.parametrize("variant", ["spaces", "bom", "crlf", "prefixless"])
def test_spaces_a_byte_order_mark_and_line_ends_read_like_the_clean_file(tmp_path, variant):
    clean = HEADER + 'HG_c1,3,"[True, False, False, False]",[3]\nLG_c2,8,"[True, False, False, True]","[0, 3, 8]"\n'
    text = {"spaces": clean.replace(",", ", ").replace(",  ", ", "), "bom": "\ufeff" + clean,
            "crlf": clean.replace("\n", "\r\n"), "prefixless": clean.replace("HG_", "").replace("LG_", "")}[variant]
    (tmp_path / "clean.csv").write_text(clean)
    (tmp_path / "x.csv").write_text(text, encoding="utf-8")
    want = read_passion_csv(tmp_path / "clean.csv")
    got = read_passion_csv(tmp_path / "x.csv")
    if variant == "prefixless":
        want = {k[3:]: v for k, v in want.items()}
    assert got == want and got[next(iter(got))] == (True, False, False, False)


def test_spaces_after_commas_still_check_mask_ids(tmp_path):
    bad = tmp_path / "x.csv"
    bad.write_text('data_name, mask_id, mask, pos_mask_ids\nc1, 3, "[False, True, False, False]", [1]\n')
    with pytest.raises(DataError, match=r"x\.csv:2: case c1: mask_id 3 \(flair\) disagrees"):
        read_passion_csv(bad)


def test_one_case_under_two_spellings_is_an_error(tmp_path):
    bad = tmp_path / "x.csv"
    bad.write_text(HEADER + 'HG_c1,0,"[False, False, False, True]",[0]\nc1,0,"[False, False, False, True]",[0]\n')
    with pytest.raises(DataError, match=r"x\.csv:3: case c1 is listed twice: also on line 2 \(as HG_c1\)"):
        read_passion_csv(bad)


def test_a_case_listed_twice_is_an_error(tmp_path):
    bad = tmp_path / "x.csv"
    bad.write_text(HEADER + 'c1,0,"[False, False, False, True]",[0]\nc1,0,"[False, False, False, True]",[0]\n')
    with pytest.raises(DataError, match=r"x\.csv:3: case c1 is listed twice: also on line 2$"):
        read_passion_csv(bad)


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("raw")
    write_synthetic_nifti(root, SynthSettings(cases=3, shape=(14, 16, 12), seed=1))
    (root / "train.txt").write_text("BraTS20_Training_001\nBraTS20_Training_002\n")
    return root


def _settings(csv_path: Path, **kw) -> PreprocessSettings:
    return PreprocessSettings(min_size=8, chunk=8, split_lists={"train": str(csv_path.parent / "train.txt")},
                              availability_csv=str(csv_path), **kw)


def test_unlisted_training_cases_need_a_flag(raw, tmp_path):
    table = tmp_path / "avail.csv"
    table.write_text(HEADER + 'HG_BraTS20_Training_001,3,"[True, False, False, False]",[3]\n')
    (tmp_path / "train.txt").write_text((raw / "train.txt").read_text())
    with pytest.raises(DataError, match=r"avail\.csv: training cases absent from the CSV: BraTS20_Training_002; "
                                        r"say what they get: --unlisted full"):
        build_cache(raw, tmp_path / "c.h5", BRATS2020, _settings(table))
    assert not (tmp_path / "c.h5").exists()
    build_cache(raw, tmp_path / "c.h5", BRATS2020, _settings(table, unlisted="full"))
    r = CacheReader(tmp_path / "c.h5")
    assert r.info("BraTS20_Training_001").availability == (True, False, False, False)
    assert r.info("BraTS20_Training_002").availability == (True,) * 4  # what "full" says
    r.close()


def test_editing_the_csv_in_place_rebuilds(raw, tmp_path):
    table = tmp_path / "avail.csv"
    (tmp_path / "train.txt").write_text((raw / "train.txt").read_text())
    table.write_text(HEADER + 'HG_BraTS20_Training_001,3,"[True, False, False, False]",[3]\n'
                     'HG_BraTS20_Training_002,0,"[False, False, False, True]",[0]\n')
    out = tmp_path / "c.h5"
    assert build_cache(raw, out, BRATS2020, _settings(table)) == "built"
    assert build_cache(raw, out, BRATS2020, _settings(table)) == "up-to-date"
    table.write_text(HEADER + 'HG_BraTS20_Training_001,1,"[False, True, False, False]",[1]\n'
                     'HG_BraTS20_Training_002,0,"[False, False, False, True]",[0]\n')
    assert build_cache(raw, out, BRATS2020, _settings(table)) == "built"
    r = CacheReader(out)
    assert r.info("BraTS20_Training_001").availability == (False, True, False, False)
    r.close()
