"""A study's cross-validation folds in its cache: cut into a synthetic study's cache, checked in a given one.

The folds are the splits ``prism-data split CACHE --folds K`` writes (:func:`prism.data.splits.fold_splits`):
``fold<k>_train`` and ``fold<k>_val`` for ``k`` in ``0 .. K-1``, the ``train`` split cut into K disjoint
validation parts. A synthetic study writes them into its own cache once (seeded by ``folds.seed``); a study whose
folds setting changed after they were written is refused, since its finished runs trained on the old folds. A
given cache must already hold them: the study never changes a cache it did not make.
"""

from __future__ import annotations

from pathlib import Path

from ..data.splits import FOLD_SPLIT, fold_split_names, fold_splits, make_splits, update_splits
from ..errors import ConfigError
from .spec import StudySpec


def cache_fold_splits(cache: Path) -> dict[str, tuple[str, ...]]:
    """The fold splits (``fold<k>_train``, ``fold<k>_val``) a cache holds, by name (read only)."""
    from ..data.cache_reader import CacheReader

    reader = CacheReader(cache)
    try:
        return {name: tuple(reader.split(name)) for name in reader.splits if FOLD_SPLIT.match(name)}
    finally:
        reader.close()


def _fold_count(names: set[str]) -> int:
    """How many folds the split names make (the number of ``fold<k>_val`` splits)."""
    return sum(1 for name in names if (m := FOLD_SPLIT.match(name)) and m.group(2) == "val")


def check_cache_folds(spec: StudySpec, cache: Path) -> None:
    """A given cache holds every fold the spec runs (and ``folds.count`` folds, when the spec says how many).

    Raises:
        ConfigError: one line naming the cache and the ``prism-data split --folds K`` that makes the folds.
    """
    if spec.folds is None:
        return
    names = set(cache_fold_splits(cache))
    have = _fold_count(names)
    make = f"make them with prism-data split {cache} --folds {spec.folds.count or 'K'}"
    if not names:
        raise ConfigError(f"data.cache: {cache} has no cross-validation folds (splits fold<k>_train/fold<k>_val); "
                          + make)
    if spec.folds.count is not None and have != spec.folds.count:
        raise ConfigError(f"data.cache: {cache} holds {have} folds, the spec's folds.count is {spec.folds.count}; "
                          f"cut them again with prism-data split {cache} --folds {spec.folds.count}, or set "
                          f"folds: {have}")
    missing = [k for k in spec.folds.indices if not set(fold_split_names(k)) <= names]
    if missing:
        raise ConfigError(f"data.cache: {cache} has no fold {missing[0]} (it holds {have} folds: 0 to {have - 1}); "
                          "run folds that exist, or " + make)


def synthetic_train_cases(spec: StudySpec) -> int | None:
    """How many cases a synthetic study's ``train`` split will hold, known before the data are generated (None: it
    depends on the sites' cases, with ``hold_out_site``)."""
    syn = spec.data.synthetic
    if syn is None or syn.hold_out_site is not None:
        return None
    ids = [str(i) for i in range(syn.cases)]  # the sizes depend on the number of cases only, never on their ids
    return len(make_splits(ids, test_fraction=syn.test_fraction, val_fraction=syn.val_fraction).get("train", []))


def _count_error(spec: StudySpec, train_cases: int) -> ConfigError:
    count = spec.folds.count if spec.folds is not None else None
    return ConfigError(f"folds.count: {count} folds of the synthetic data's {train_cases} training cases; need 2 "
                       f"to {train_cases} (more data.synthetic.cases, or fewer folds)")


def _synthetic_folds(spec: StudySpec, cache: Path) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """(the folds the spec cuts from the cache's ``train`` split, the fold splits the cache holds now)."""
    from ..data.cache_reader import CacheReader

    assert spec.folds is not None and spec.folds.count is not None
    reader = CacheReader(cache)
    try:
        train = reader.split("train")
        held = {name: list(reader.split(name)) for name in reader.splits if FOLD_SPLIT.match(name)}
    finally:
        reader.close()
    if not 2 <= spec.folds.count <= len(train):
        raise _count_error(spec, len(train))
    return fold_splits(train, spec.folds.count, seed=spec.folds.seed or 0), held


def _refuse_other_folds(cache: Path, wanted: dict[str, list[str]], held: dict[str, list[str]]) -> None:
    if held and held != wanted:
        raise ConfigError(f"folds: the study's cache {cache} holds {_fold_count(set(held))} folds cut for another "
                          "folds setting (runs may have trained on them); run these folds in a new study folder")


def check_folds_before_writing(spec: StudySpec, cache: Path) -> None:
    """Everything about the folds that can be checked before the study writes anything: a given cache holds them
    (:func:`check_cache_folds`); a synthetic study's folds can be cut from its training cases; a synthetic cache
    made earlier holds no other folds than the spec's (its runs trained on those).

    Raises:
        ConfigError: one line naming the field (``folds``, ``folds.count``, ``data.cache``) and what to do.
    """
    if spec.folds is None:
        return
    if spec.data.cache is not None:
        check_cache_folds(spec, cache)
        return
    train_cases = synthetic_train_cases(spec)
    if train_cases is not None and not 2 <= (spec.folds.count or 0) <= train_cases:
        raise _count_error(spec, train_cases)
    if cache.is_file():
        _refuse_other_folds(cache, *_synthetic_folds(spec, cache))


def write_synthetic_folds(spec: StudySpec, cache: Path) -> None:
    """Cut a synthetic study's ``train`` split into ``folds.count`` folds (:func:`prism.data.splits.fold_splits`,
    seed ``folds.seed``) and store them in its cache, once: a cache that already holds them is left as it is.

    Raises:
        ConfigError: too many folds for the training cases, or the cache holds other folds.
    """
    if spec.folds is None:
        return
    wanted, held = _synthetic_folds(spec, cache)
    _refuse_other_folds(cache, wanted, held)
    if not held:
        update_splits(cache, lambda reader: wanted)


__all__ = ["cache_fold_splits", "check_cache_folds", "check_folds_before_writing", "synthetic_train_cases",
           "write_synthetic_folds"]
