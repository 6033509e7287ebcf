"""Which modalities each case has: from PASSION's split CSVs, from ``mrABCD`` missing rates, or drawn with a seed.

PASSION's CSVs have columns ``data_name, mask_id, mask, pos_mask_ids``; ``mask`` is a Python-style bool list in
[FLAIR, T1ce, T1, T2] order. A file named ``..._mrABCD...`` carries missing rates x10 for [T1, T1ce, FLAIR, T2].
Nothing here calls ``eval``: lists are parsed token by token.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..modalities import BRATS_MODALITIES, BRATS_REPORT_ORDER

#: modality order of a PASSION ``mask`` column
PASSION_MASK_ORDER: tuple[str, ...] = ("flair", "t1ce", "t1", "t2")
#: modality order of the digits in a PASSION ``mrABCD`` file name
PASSION_RATE_ORDER: tuple[str, ...] = ("t1", "t1ce", "flair", "t2")

#: a BraTS grade prefix on a case name (PASSION's CSVs and BraTS 2018's HGG/LGG folders)
GRADE_PREFIX = re.compile(r"^(?:HGG|LGG|HG|LG)_")
_MR_NAME = re.compile(r"(?:^|[_\-.])mr(\d{4})(?=$|[_\-.])")
_BOOLS = {"true": True, "false": False, "1": True, "0": False}


def parse_bool_list(text: str, *, where: str = "") -> list[bool]:
    """``"[True, False, 1, 0]"`` -> ``[True, False, True, False]`` (no eval; anything else is a DataError)."""
    body = text.strip()
    if not (body.startswith("[") and body.endswith("]")):
        raise DataError(f"{where}: expected a list like [True, False], got {text!r}")
    items = [t.strip().lower() for t in body[1:-1].split(",") if t.strip()]
    try:
        return [_BOOLS[t] for t in items]
    except KeyError:
        raise DataError(f"{where}: {text!r} is not a list of True/False") from None


def parse_int_list(text: str, *, where: str = "") -> list[int]:
    """``"[1, 2, 3]"`` or ``"[1]"`` -> ints (no eval)."""
    body = text.strip()
    if not (body.startswith("[") and body.endswith("]")):
        raise DataError(f"{where}: expected a list like [1, 2], got {text!r}")
    try:
        return [int(t) for t in body[1:-1].split(",") if t.strip()]
    except ValueError:
        raise DataError(f"{where}: {text!r} is not a list of integers") from None


def missing_rates_from_name(name: str) -> dict[str, float]:
    """Missing rate per modality from a PASSION file name (``Brats2020_imb_split_mr2468.csv`` -> t1 0.2, ...)."""
    match = _MR_NAME.search(Path(name).stem)
    if match is None:
        raise DataError(f"{name}: no 'mrABCD' (missing rates x10 for T1, T1ce, FLAIR, T2) in the name")
    return {m: int(d) / 10 for m, d in zip(PASSION_RATE_ORDER, match.group(1), strict=True)}


def parse_missing_rates(text: str, modalities: Sequence[str]) -> dict[str, float]:
    """``mr2468`` (PASSION) or ``flair=0.6,t1ce=0.4`` -> rate per modality (unlisted modalities: 0)."""
    text = text.strip()
    if re.fullmatch(r"mr\d{4}", text):
        rates = missing_rates_from_name(text)
    else:
        rates = {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            key, sep, value = part.partition("=")
            try:
                rates[key.strip()] = float(value)
            except ValueError:
                raise DataError(f"missing rates: {part!r} is not 'modality=rate'") from None
            if not sep:
                raise DataError(f"missing rates: {part!r} is not 'modality=rate'")
    unknown = sorted(set(rates) - set(modalities))
    if unknown:
        raise DataError(f"missing rates: unknown modalities {unknown} (dataset has {list(modalities)})")
    bad = {m: r for m, r in rates.items() if not 0 <= r < 1}
    if bad:
        raise DataError(f"missing rates: each must be in [0, 1), got {bad}")
    return {m: float(rates.get(m, 0.0)) for m in modalities}


def draw_availability(case_ids: Sequence[str], rates: Mapping[str, float], modalities: Sequence[str], *,
                      seed: int = 0) -> dict[str, tuple[bool, ...]]:
    """Each case drops modality ``m`` with probability ``rates[m]``; an all-missing draw is redrawn.

    Reproducible from ``seed``; cases are processed in sorted order so the result does not depend on input order.
    """
    rng = np.random.default_rng(seed)
    p_missing = np.array([float(rates.get(m, 0.0)) for m in modalities])
    out: dict[str, tuple[bool, ...]] = {}
    for case in sorted(case_ids):
        while True:
            row = rng.random(len(modalities)) >= p_missing
            if row.any():
                break
        out[case] = tuple(bool(v) for v in row)
    return out


def case_key(name: str) -> str:
    """The case a name in a list or CSV stands for: surrounding whitespace and a BraTS grade prefix (``HG_``,
    ``LG_``, ``HGG_``, ``LGG_``; PASSION writes ``HG_BraTS20_Training_001`` for ``BraTS20_Training_001``) dropped,
    so two spellings of one case are recognised as one."""
    return GRADE_PREFIX.sub("", name.strip())


def read_csv_rows(path: str | Path) -> list[list[str]]:
    """The rows of a UTF-8 CSV file (a byte-order mark is dropped, spaces after commas ignored, so quoted fields
    may follow ``", "``); errors are one line.

    Raises:
        DataError: the file cannot be read, is not UTF-8 text, or is not valid CSV (e.g. a field over the csv
            module's limit of 131,072 characters), naming the file and line.
    """
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh, skipinitialspace=True)
            try:
                return [[field.strip() for field in row] for row in reader]
            except csv.Error as exc:
                raise DataError(f"{path}:{reader.line_num}: not a valid CSV row: {exc}") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start}); "
                        "save it as UTF-8") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror}") from None


def read_passion_csv(path: str | Path, modalities: Sequence[str] = BRATS_MODALITIES
                     ) -> dict[str, tuple[bool, ...]]:
    """Availability per case name from a PASSION split CSV, reordered to ``modalities``.

    Column names and values are read without surrounding spaces and a UTF-8 byte-order mark; a case listed twice,
    also under two spellings (with and without a grade prefix, see :func:`case_key`), is an error. The
    ``mask_id`` and ``pos_mask_ids`` columns, when present, must agree with ``mask``.

    Raises:
        DataError: one line naming the file (and line) of any problem.
    """
    path = Path(path)
    missing = sorted(set(PASSION_MASK_ORDER) - set(modalities))
    if missing:
        raise DataError(f"{path}: PASSION masks need modalities {list(PASSION_MASK_ORDER)}, dataset lacks {missing}")
    rows = read_csv_rows(path)
    header = rows[0] if rows else []
    if "data_name" not in header or "mask" not in header:
        raise DataError(f"{path}: not a PASSION split CSV (needs columns data_name and mask; the header is "
                        f"{', '.join(header) or 'empty'})")
    out: dict[str, tuple[bool, ...]] = {}
    seen: dict[str, tuple[int, str]] = {}  # case key -> (line, name as written)
    for line, values in enumerate(rows[1:], start=2):
        if not any(values):
            continue
        row = dict(zip(header, values, strict=False))
        where = f"{path}:{line}"
        name = row.get("data_name", "")
        if not name:
            raise DataError(f"{where}: empty data_name")
        key = case_key(name)
        if key in seen:
            first_line, first_name = seen[key]
            also = "" if first_name == name else f" (as {first_name})"
            raise DataError(f"{where}: case {name} is listed twice: also on line {first_line}{also}")
        seen[key] = (line, name)
        mask = parse_bool_list(row.get("mask", ""), where=where)
        if len(mask) != len(PASSION_MASK_ORDER) or not any(mask):
            raise DataError(f"{where}: case {name}: mask must have 4 entries, at least one True")
        by_name = dict(zip(PASSION_MASK_ORDER, mask, strict=True))
        _check_mask_ids(row, {m for m, v in by_name.items() if v}, where=f"{where}: case {name}")
        out[name] = tuple(by_name.get(m, False) for m in modalities)
    if not out:
        raise DataError(f"{path}: the PASSION split CSV lists no case")
    return out


def _combination_text(index: int) -> str:
    return "+".join(m for m in PASSION_MASK_ORDER if m in BRATS_REPORT_ORDER[index])


def _check_mask_ids(row: Mapping[str, str | None], available: set[str], *, where: str) -> None:
    """``mask_id`` must be the combination index of ``mask`` and ``pos_mask_ids`` the indices of its non-empty
    subsets (PASSION's combination order, ``prism.modalities.BRATS_REPORT_ORDER``), when the columns exist."""
    own = BRATS_REPORT_ORDER.index(frozenset(available))
    text = "+".join(m for m in PASSION_MASK_ORDER if m in available)
    if "mask_id" in row:
        raw = (row.get("mask_id") or "").strip()
        try:
            given = int(raw)
        except ValueError:
            raise DataError(f"{where}: mask_id {raw!r} is not an integer") from None
        if given != own:
            shown = _combination_text(given) if 0 <= given < len(BRATS_REPORT_ORDER) else "no combination"
            raise DataError(f"{where}: mask_id {given} ({shown}) disagrees with mask ({text}, mask_id {own})")
    if "pos_mask_ids" in row:
        given_ids = sorted(parse_int_list(row.get("pos_mask_ids") or "", where=where))
        subsets = [i for i, members in enumerate(BRATS_REPORT_ORDER) if members <= available]
        if given_ids != subsets:
            raise DataError(f"{where}: pos_mask_ids {given_ids} disagree with mask ({text}: its non-empty "
                            f"subsets are {subsets})")


def file_sha256(path: str | Path) -> str:
    """SHA-256 (hex) of a file's content: an availability CSV edited in place changes the cache's provenance."""
    import hashlib

    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror}") from None
