"""Cross-validation folds (``prism-data split --folds``, ``data.fold``) and split updates under a lock."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import fast_config
from prism.cli.data import main as data_main
from prism.data.cache_reader import CacheReader
from prism.data.splits import cache_lock, fold_split_names, fold_splits
from prism.data_tools.synthetic import SynthSettings, write_synthetic_cache
from prism.errors import DataError


@pytest.mark.parametrize("n, k", [(10, 5), (11, 3), (7, 7), (2, 2)])
def test_folds_are_disjoint_and_validate_every_case_once(n, k):
    cases = [f"case{i:02d}" for i in range(n)]
    splits = fold_splits(cases, k, seed=3)
    vals = [splits[fold_split_names(f)[1]] for f in range(k)]
    seen = [c for v in vals for c in v]
    assert sorted(seen) == cases  # complete, and each case exactly once
    assert max(map(len, vals)) - min(map(len, vals)) <= 1  # as even as possible
    for f in range(k):
        train, val = (splits[name] for name in fold_split_names(f))
        assert set(train).isdisjoint(val) and sorted(train + val) == cases
    assert fold_splits(list(reversed(cases)), k, seed=3) == splits  # the input order does not matter
    if n > 2:
        assert fold_splits(cases, k, seed=4) != splits  # the seed does


def test_fold_counts_out_of_range_are_refused():
    with pytest.raises(DataError, match="--folds: 5 folds of 4 training cases; need 2 to 4"):
        fold_splits(["a", "b", "c", "d"], 5)
    with pytest.raises(DataError, match="need 2 to"):
        fold_splits(["a", "b", "c"], 1)


@pytest.fixture
def cache(tmp_path) -> Path:
    path = tmp_path / "c.h5"
    write_synthetic_cache(str(path), SynthSettings(cases=12, shape=(16, 16, 16), seed=1, sites=3),
                          test_fraction=0.25)
    return path


def test_split_folds_writes_k_named_pairs_of_the_train_split_and_replaces_older_folds(cache, capsys):
    assert data_main(["split", str(cache), "--folds", "5", "--seed", "2"]) == 0
    assert data_main(["split", str(cache), "--folds", "3"]) == 0  # fewer folds: the old fold3, fold4 go
    reader = CacheReader(cache)
    train = set(reader.split("train"))
    folds = sorted(n for n in reader.splits if n.startswith("fold"))
    assert folds == ["fold0_train", "fold0_val", "fold1_train", "fold1_val", "fold2_train", "fold2_val"]
    vals = [set(reader.split(f"fold{k}_val")) for k in range(3)]
    assert set().union(*vals) == train and sum(map(len, vals)) == len(train)
    for k in range(3):
        assert set(reader.split(f"fold{k}_train")) == train - vals[k]
    assert set(reader.split("test")).isdisjoint(train)  # the test split is left alone
    reader.close()


def test_data_fold_trains_on_the_fold_and_validates_on_its_validation_part(cache):
    from prism.engine.trainer import Trainer

    assert data_main(["split", str(cache), "--folds", "4"]) == 0
    config = fast_config("data.fold=2", "train.val_every=1", "train.val_cases=99", cache=cache)
    assert config.training_splits() == ("fold2_train", "fold2_val")
    trainer = Trainer(config, cache.parent / "run", cache_path=cache)
    reader = CacheReader(cache)
    assert trainer.train_cases == reader.split("fold2_train")
    assert trainer.val_cases == reader.split("fold2_val")
    trainer.reader.close()
    reader.close()
    assert fast_config(cache=cache).training_splits() == ("train", "val")


def test_the_dataset_fingerprint_ignores_splits_and_layout_but_not_the_data(cache, tmp_path):
    from prism.data.cache_writer import CacheWriter

    before = CacheReader(cache).fingerprint
    assert data_main(["split", str(cache), "--folds", "3"]) == 0
    assert CacheReader(cache).fingerprint == before
    reader = CacheReader(cache)
    relaid = tmp_path / "relaid.h5"  # the same cases in another layout and compression
    with CacheWriter(relaid, modalities=reader.modalities, labels=reader.labels, chunk=8, codec="lz4", clevel=1,
                     sources=reader.sources) as w:
        for case in reader.case_ids:
            info = reader.info(case)
            image, label = reader.read_case(case)
            w.add_case(case, image, label, availability=info.availability, present=info.present,
                       spacing=info.spacing, affine=info.affine, crop_box=info.crop_box,
                       original_shape=info.original_shape, site=info.site, foreground=reader.foreground(case))
    assert CacheReader(relaid).fingerprint == before
    other = tmp_path / "other.h5"
    write_synthetic_cache(str(other), SynthSettings(cases=12, shape=(16, 16, 16), seed=2, sites=3),
                          test_fraction=0.25)
    assert CacheReader(other).fingerprint != before


_SPLIT = """
import sys
from prism.cli.data import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_concurrent_split_updates_both_land(cache):
    """Two splits started together while the lock is held: each waits, then reads what the other wrote."""
    with cache_lock(cache):
        procs = [subprocess.Popen([sys.executable, "-c", _SPLIT, "split", str(cache), *args],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for args in (["--folds", "3"], ["--hold-out-site", "site2"])]
    outcomes = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outcomes
    reader = CacheReader(cache)
    assert "heldout" in reader.splits and "fold2_val" in reader.splits  # no update lost
    reader.close()


def test_lock_is_exclusive_and_leaves_no_file(cache):
    import fcntl
    import os

    listing = sorted(p.name for p in cache.parent.iterdir())
    with cache_lock(cache):
        fd = os.open(cache.parent, os.O_RDONLY)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
    assert sorted(p.name for p in cache.parent.iterdir()) == listing
