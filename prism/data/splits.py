"""Train/val/test splits: reproducible from a seed, or read from plain-text case lists (RFNet/PASSION style)."""

from __future__ import annotations

import fcntl
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CacheError, DataError
from .availability import case_key

_SUFFIXES = (".nii.gz", ".nii", ".npy", ".h5")


def make_splits(case_ids: Sequence[str], *, seed: int = 0, test_fraction: float = 0.2,
                val_fraction: float = 0.0) -> dict[str, list[str]]:
    """Shuffle ``case_ids`` with ``seed`` and cut them into train/val/test (each sorted; empty splits left out)."""
    if not 0 <= test_fraction < 1 or not 0 <= val_fraction < 1 or test_fraction + val_fraction >= 1:
        raise ValueError(f"bad split fractions: test {test_fraction}, val {val_fraction}")
    ids = sorted(case_ids)
    order = np.random.default_rng(seed).permutation(len(ids))
    n_test = int(round(len(ids) * test_fraction))
    n_val = int(round(len(ids) * val_fraction))
    test = sorted(ids[i] for i in order[:n_test])
    val = sorted(ids[i] for i in order[n_test:n_test + n_val])
    train = sorted(ids[i] for i in order[n_test + n_val:])
    return {name: members for name, members in (("train", train), ("val", val), ("test", test)) if members}


def read_case_list(path: str | Path) -> list[str]:
    """Case names from a text file: one per line; blank lines and ``#`` comments skipped; a directory part and a
    volume suffix (``.npy``, ``.nii.gz``) are dropped, so RFNet-style lists of paths also work."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read case list: {exc}") from None
    names = []
    for line in lines:
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        text = text.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
        for suffix in _SUFFIXES:
            if text.endswith(suffix):
                text = text[: -len(suffix)]
                break
        names.append(text)
    return names


def resolve_case_names(names: Iterable[str], known: Iterable[str], *, source: str) -> list[str]:
    """Map names from a list or CSV to known case ids: exact match, else without a grade prefix
    (PASSION writes ``HG_BraTS20_Training_001`` for folder ``BraTS20_Training_001``; see
    :func:`~prism.data.availability.case_key`).

    Raises:
        DataError: a name matches no case, or two names (e.g. two spellings) name the same case.
    """
    known_set = set(known)
    out = []
    unknown = []
    given: dict[str, str] = {}  # case id -> the name that named it
    for name in names:
        if name in known_set:
            case = name
        elif case_key(name) in known_set:
            case = case_key(name)
        else:
            unknown.append(name)
            continue
        if case in given:
            spellings = "" if given[case] == name else f" (as {given[case]} and {name})"
            raise DataError(f"{source}: case {case} is named twice{spellings}")
        given[case] = name
        out.append(case)
    if unknown:
        more = f" and {len(unknown) - 3} more" if len(unknown) > 3 else ""
        raise DataError(f"{source}: names unknown cases: {', '.join(unknown[:3])}{more}")
    return out


def splits_from_lists(lists: Mapping[str, str | Path], case_ids: Sequence[str]) -> dict[str, list[str]]:
    """Splits from text lists (name -> file); cases in no list go to ``train`` unless a train list is given."""
    splits: dict[str, list[str]] = {}
    seen: dict[str, str] = {}
    for name, path in lists.items():
        members = resolve_case_names(read_case_list(path), case_ids, source=str(path))
        for case in members:
            if case in seen and seen[case] != name:
                raise DataError(f"{path}: case {case} is also in split '{seen[case]}'")
            seen[case] = name
        splits[name] = sorted(set(members))
    if "train" not in splits:
        rest = sorted(set(case_ids) - set(seen))
        if rest:
            splits["train"] = rest
    return {k: v for k, v in splits.items() if v}


HELD_OUT_SPLIT = "heldout"


def hold_out_site_splits(case_sites: Mapping[str, str], hold_out: Sequence[str], *, seed: int = 0,
                         test_fraction: float = 0.2, val_fraction: float = 0.0) -> dict[str, list[str]]:
    """Splits that keep whole sites out of training.

    The cases of the ``hold_out`` sites form the split ``heldout``; the others are cut into train/val/test by
    :func:`make_splits`. ``case_sites`` maps case id -> site name. Raises DataError naming an unknown site, or when
    nothing is left to train on.
    """
    known = sorted(set(case_sites.values()))
    unknown = sorted(set(hold_out) - set(known))
    if unknown:
        raise DataError(f"--hold-out-site: unknown site(s) {unknown} (the cases' sites: {known})")
    held = sorted(c for c, s in case_sites.items() if s in set(hold_out))
    rest = sorted(c for c, s in case_sites.items() if s not in set(hold_out))
    if len(rest) < 2:
        raise DataError(f"--hold-out-site: holding out {sorted(set(hold_out))} leaves {len(rest)} case(s) to train on")
    splits = make_splits(rest, seed=seed, test_fraction=test_fraction, val_fraction=val_fraction)
    splits[HELD_OUT_SPLIT] = held
    return splits


#: The splits :func:`hold_out_site_splits` writes; ``write_splits(..., replace=SITE_SPLITS)`` drops old ones first.
SITE_SPLITS = ("train", "val", "test", HELD_OUT_SPLIT)


FOLD_SPLIT = re.compile(r"^fold(\d+)_(train|val)$")


def fold_split_names(fold: int) -> tuple[str, str]:
    """The (training, validation) split names of cross-validation fold ``fold``: ``fold<k>_train``, ``fold<k>_val``."""
    return f"fold{int(fold)}_train", f"fold{int(fold)}_val"


def fold_splits(case_ids: Sequence[str], folds: int, *, seed: int = 0) -> dict[str, list[str]]:
    """k-fold cross-validation splits of ``case_ids`` (nnU-Net's five folds are ``folds=5``).

    The cases are shuffled with ``seed`` and dealt in turn into ``folds`` disjoint validation parts (sizes differ
    by at most one), so every case is validated exactly once; fold ``k`` trains on all the other parts.

    Args:
        case_ids: the cases to cut (usually the ``train`` split).
        folds: number of folds, 2 to ``len(case_ids)``.
        seed: shuffle seed.

    Returns:
        ``{"fold0_train": [...], "fold0_val": [...], ...}``, each list sorted.

    Raises:
        DataError: fewer than 2 folds, or more folds than cases.
    """
    ids = sorted(set(case_ids))
    if not 2 <= folds <= len(ids):
        raise DataError(f"--folds: {folds} folds of {len(ids)} training cases; need 2 to {len(ids)}")
    order = np.random.default_rng(seed).permutation(len(ids))
    parts = [sorted(ids[i] for i in order[k::folds]) for k in range(folds)]
    out: dict[str, list[str]] = {}
    for k in range(folds):
        train, val = fold_split_names(k)
        out[train] = sorted(c for j, part in enumerate(parts) if j != k for c in part)
        out[val] = parts[k]
    return out


@contextmanager
def cache_lock(cache: str | Path) -> Iterator[None]:
    """Hold an exclusive lock while a cache's splits are read, changed and written back.

    The lock is ``flock`` on the cache's folder: nothing is written for it, HDF5's own lock on the file is not
    touched, and it holds across the rename that replaces the file. Updates of other caches in the same folder
    wait too (they take a moment).

    Raises:
        CacheError: the cache file does not exist.
    """
    cache = Path(cache)
    if not cache.is_file():
        raise CacheError(f"{cache}: cache file not found")
    try:
        fd = os.open(cache.parent, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        raise CacheError(f"{cache.parent}: cannot open the cache's folder: {exc.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def update_splits(cache: str | Path, make: Callable[[Any], Mapping[str, Sequence[str]]], *,
                  replace: Callable[[str], bool] = lambda name: False) -> dict[str, list[str]]:
    """Read the cache, compute splits with ``make(reader)`` and store them, all under :func:`cache_lock`, so two
    concurrent updates both land. The cache is rewritten atomically: a copy is changed and renamed over it, a
    crash leaves the old file whole. Existing splits for which ``replace(name)`` is true are removed first; other
    splits are kept.

    Args:
        cache: the cache file.
        make: gets the open :class:`~prism.data.cache_reader.CacheReader`, returns the splits to store.
        replace: which existing splits to drop.

    Returns:
        The stored splits.

    Raises:
        DataError: a split names a case the cache does not hold.
        CacheError: the cache is missing or corrupted.
        StorageError: the copy cannot be written (see :mod:`prism.atomic`).
    """
    import shutil

    import h5py

    from ..atomic import write_atomic
    from .cache_reader import CacheReader

    cache = Path(cache)
    with cache_lock(cache):
        reader = CacheReader(cache)
        try:
            splits = {name: sorted(members) for name, members in make(reader).items()}
            known, existing = set(reader.case_ids), set(reader.splits)
        finally:
            reader.close()
        for name, members in splits.items():
            unknown = sorted(set(members) - known)
            if unknown:
                raise DataError(f"{cache}: split '{name}' names cases not in the cache: {unknown[:3]}")
        dropped = {name for name in existing if replace(name)}

        def write(tmp: Path) -> None:
            shutil.copyfile(cache, tmp)
            with h5py.File(tmp, "r+") as f:
                group = f["splits"]
                for name in dropped | set(splits):
                    if name in group:
                        del group[name]
                for name, members in splits.items():
                    group.create_dataset(name, data=np.array(members, dtype=h5py.string_dtype()))

        write_atomic(cache, write)
    return splits


def write_splits(cache: str | Path, splits: Mapping[str, Sequence[str]], *, replace: Sequence[str] = ()) -> None:
    """Store named splits in an existing cache (see :func:`update_splits`); splits named in ``replace`` are removed
    first, other splits are kept.

    Raises:
        DataError: a split names a case the cache does not hold.
        StorageError: the copy cannot be written (see :mod:`prism.atomic`).
    """
    update_splits(cache, lambda reader: splits, replace=lambda name: name in set(replace))
