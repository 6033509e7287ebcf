"""Raw dataset layouts: which file in a case folder holds which modality, and how labels map to the cache.

Built in: ``brats2020`` (2018-2021: ``<case>_{flair,t1ce,t1,t2,seg}.nii.gz``) and ``brats2023``
(``<case>-{t2f,t1c,t1n,t2w,seg}.nii.gz``). Any other dataset: a small YAML/JSON description::

    name: mydata
    modalities: {flair: "{case}_FLAIR.nii.gz", t1: "{case}_T1.nii.gz"}   # declared order = channel order
    label: "{case}_mask.nii.gz"
    labels: {0: background, 1: lesion}                                    # stored label names
    label_map: {0: 0, 255: 1}                                             # raw value -> stored value
"""

from __future__ import annotations

import difflib
import errno
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from prism.data.cache_format import BRATS_LABELS
from prism.errors import DataError

DESCRIPTION_NAMES = ("prism-dataset.yaml", "prism-dataset.yml", "prism-dataset.json")
_NIFTI = (".nii.gz", ".nii")


@dataclass(frozen=True)
class DatasetLayout:
    """Modality names (channel order), file patterns per modality and label, label names and raw->stored map."""

    name: str
    files: dict[str, tuple[str, ...]]  # modality -> patterns (first existing wins); ``{case}`` = folder name
    label: tuple[str, ...]
    labels: dict[int, str]
    label_map: dict[int, int]
    site_file: str = "sites.csv"  # optional CSV in the raw root: case,site
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(self.files)

    def describe(self) -> dict[str, Any]:
        """JSON-ready description (part of the preprocessing settings hash)."""
        return {"name": self.name, "files": {k: list(v) for k, v in self.files.items()}, "label": list(self.label),
                "labels": {str(k): v for k, v in self.labels.items()},
                "label_map": {str(k): v for k, v in self.label_map.items()}}


def _patterns(stem: str) -> tuple[str, ...]:
    return tuple(stem + ext for ext in _NIFTI)


BRATS2020 = DatasetLayout(
    name="brats2020",
    files={m: _patterns("{case}_" + m) for m in ("flair", "t1ce", "t1", "t2")},
    label=_patterns("{case}_seg"),
    labels=dict(BRATS_LABELS),
    label_map={0: 0, 1: 1, 2: 2, 4: 3},
)
BRATS2023 = DatasetLayout(
    name="brats2023",
    files={m: _patterns("{case}-" + raw) for m, raw in (("flair", "t2f"), ("t1ce", "t1c"), ("t1", "t1n"),
                                                      ("t2", "t2w"))},
    label=_patterns("{case}-seg"),
    labels=dict(BRATS_LABELS),
    label_map={0: 0, 1: 1, 2: 2, 3: 3},
)
BUILTIN_LAYOUTS = {"brats2020": BRATS2020, "brats2023": BRATS2023}


def _as_patterns(value: str | list[str], where: str) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    if not items or not all("{case}" in v for v in items):
        raise DataError(f"{where}: expected a file pattern (or list of them) containing '{{case}}'")
    return tuple(items)


class DatasetDescription(BaseModel):
    """A dataset description file, validated like a config: unknown keys are errors (with the closest match)."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = None  # default: the file's name without suffix
    modalities: dict[str, str | list[str]]  # modality -> file pattern(s); declared order = channel order
    label: str | list[str]  # the label file pattern(s)
    labels: dict[int, str] | None = None  # stored label values 0..K-1 and their names (default: background, fg)
    label_map: dict[int, int] | None = None  # raw label value -> stored value (default: identity)
    site_file: str = "sites.csv"  # optional CSV in the raw root: case,site


def _description_error(path: Path, exc: ValidationError) -> DataError:
    """The first problem of a description file in one line, naming the key (and the closest allowed one)."""
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"] if p not in ("str", "list[str]", "[key]"))  # not union tags
    if err["type"] == "extra_forbidden":
        allowed = list(DatasetDescription.model_fields)
        close = difflib.get_close_matches(str(err["loc"][-1]), allowed, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        return DataError(f"{path}: {where}: unknown key; {hint}allowed: {', '.join(allowed)}")
    if err["type"] == "missing":
        return DataError(f"{path}: '{where}' is required")
    return DataError(f"{path}: {where}: {err['msg']}")


def layout_from_description(path: str | Path) -> DatasetLayout:
    """Read a dataset description (YAML or JSON; see the module docstring).

    Raises:
        DataError: one line: unreadable or not UTF-8, invalid YAML/JSON, an unknown or missing key, a pattern
            without ``{case}``, labels that are not 0..K-1 or a label map pointing outside them.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start})") from None
    except (OSError, ValueError, yaml.YAMLError) as exc:
        text = " ".join(str(getattr(exc, "strerror", None) or exc).split())[:160]
        raise DataError(f"{path}: cannot read dataset description: {text}") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: a dataset description must be a mapping of keys (modalities, label, ...)")
    try:
        desc = DatasetDescription.model_validate(data)
    except ValidationError as exc:
        raise _description_error(path, exc) from None
    if not desc.modalities:
        raise DataError(f"{path}: 'modalities' must map modality names to file patterns")
    files = {m: _as_patterns(p, f"{path}: modalities.{m}") for m, p in desc.modalities.items()}
    labels = desc.labels or {0: "background", 1: "foreground"}
    label_map = desc.label_map or {k: k for k in labels}
    bad = sorted(set(label_map.values()) - set(labels))
    if bad or sorted(labels) != list(range(len(labels))):
        raise DataError(f"{path}: labels must be 0..K-1 and label_map must map into them (bad targets {bad})")
    return DatasetLayout(name=desc.name or path.stem, files=files, label=_as_patterns(desc.label, f"{path}: label"),
                         labels=labels, label_map=label_map, site_file=desc.site_file)


def resolve_layout(spec: str, raw_root: Path) -> DatasetLayout:
    """``auto`` (a description file in the root, else BraTS naming detected), a built-in name, or a file path."""
    if spec in BUILTIN_LAYOUTS:
        return BUILTIN_LAYOUTS[spec]
    if spec != "auto":
        if not Path(spec).is_file():
            raise DataError(f"--layout: '{spec}' is neither {sorted(BUILTIN_LAYOUTS)}, 'auto' nor a file")
        return layout_from_description(spec)
    for name in DESCRIPTION_NAMES:
        if (raw_root / name).is_file():
            return layout_from_description(raw_root / name)
    for folder in case_folders(raw_root):
        names = [p.name for p in folder.iterdir()]
        if any(n.endswith(("_flair.nii.gz", "_flair.nii", "_t1ce.nii.gz", "_t1ce.nii")) for n in names):
            return BRATS2020
        if any(n.endswith(("-t2f.nii.gz", "-t2f.nii", "-t1c.nii.gz", "-t1c.nii")) for n in names):
            return BRATS2023
    raise DataError(f"{raw_root}: cannot tell the layout (no BraTS file names, no prism-dataset.yaml); "
                    "pass --layout")


def case_folders(raw_root: Path) -> list[Path]:
    """Case folders: sub-folders of the root holding files, or one level deeper (BraTS 2018 HGG/ and LGG/)."""
    if not raw_root.is_dir():
        raise DataError(f"{raw_root}: raw data folder not found")
    out = []
    for entry in sorted(raw_root.iterdir()):
        if not entry.is_dir() or entry.name.startswith("."):
            continue
        children = list(entry.iterdir())
        if children and all(c.is_dir() for c in children):
            out.extend(sorted(c for c in children if not c.name.startswith(".")))
        else:
            out.append(entry)
    if not out:
        raise DataError(f"{raw_root}: no case folders found")
    return out


@dataclass(frozen=True)
class RawCase:
    """One case folder: the file of each modality (None = absent, the modality is unavailable) and the label."""

    case_id: str
    folder: Path
    files: dict[str, Path | None]
    label: Path | None


def find_file(folder: Path, case_id: str, patterns: tuple[str, ...]) -> Path | None:
    """The first of ``patterns`` (``{case}`` replaced by ``case_id``) that exists in ``folder``, else None.

    Raises:
        DataError: a candidate is a broken symbolic link (dangling, or a loop): a file meant to be there that
            cannot be read is an error, not a missing modality.
    """
    for pattern in patterns:
        candidate = folder / pattern.format(case=case_id)
        try:
            os.stat(candidate)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise DataError(f"case {case_id}: {candidate} is a symbolic link loop") from None
            if os.path.islink(candidate):
                raise DataError(f"case {case_id}: {candidate} is a symbolic link to a missing file "
                                f"({os.readlink(candidate)})") from None
            if exc.errno in (errno.ENOENT, errno.ENOTDIR):
                continue
            raise DataError(f"case {case_id}: cannot read {candidate}: {exc.strerror}") from None
        return candidate
    return None


def discover_cases(raw_root: Path, layout: DatasetLayout, *, require_label: bool = True,
                   folders: Sequence[Path] | None = None) -> list[RawCase]:
    """Every case under ``raw_root`` (or in ``folders`` when given, in that order).

    An empty folder, one with no modality file, a case id found twice, or (``require_label``) a missing label
    file is a DataError. Without ``require_label`` the label file is not looked for (``RawCase.label`` is None).
    """
    cases = []
    seen: dict[str, Path] = {}
    for folder in case_folders(raw_root) if folders is None else folders:
        case_id = folder.name
        if not any(folder.iterdir()):
            raise DataError(f"case {case_id}: empty case folder {folder}")
        files = {m: find_file(folder, case_id, pats) for m, pats in layout.files.items()}
        if not any(files.values()):
            wanted = ", ".join(p.format(case=case_id) for p in (v[0] for v in layout.files.values()))
            raise DataError(f"case {case_id}: no modality file in {folder} (expected {wanted})")
        label = find_file(folder, case_id, layout.label) if require_label else None
        if require_label and label is None:
            raise DataError(f"case {case_id}: label file {layout.label[0].format(case=case_id)} missing in {folder}")
        if case_id in seen:
            raise DataError(f"case {case_id}: found twice ({seen[case_id]} and {folder})")
        seen[case_id] = folder
        cases.append(RawCase(case_id=case_id, folder=folder, files=files, label=label))
    return cases
