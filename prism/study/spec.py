"""A study spec (YAML): the data, a base config, the arms, the seeds, the reference arm and the evaluation.

Every arm x seed becomes an ordinary prism :class:`~prism.config.Config`, built exactly as ``prism-train`` builds
one: the defaults, then the preset or config file, then the spec's ``base`` sections, then the arm's ``config``
sections (mappings merged, lists replaced), then the spec's ``overrides``, then the arm's ``overrides`` (dotted
``field=value`` strings), then ``train.seed`` and ``data.cache``. Unknown fields are errors naming the field.

Example::

    name: smoke
    data: {synthetic: {cases: 8, shape: [32, 32, 32], sites: 2}}
    preset: demo
    overrides: [train.steps=40]
    arms:
      baseline: {}
      prism: {config: {losses: [{name: fuse}, {name: pixel_kl, weight: 0.5}]}}
    reference: baseline
    seeds: [0, 1]
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..config import Config, _deep_merge, build_config, load_yaml
from ..errors import ConfigError
from ..evaluation.adaptation_curve import DEFAULT_DRAWS, DEFAULT_RULE, DEFAULT_STEPS, DEFAULT_SUPPORT

_ARM_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
#: the smallest synthetic volume side (as ``prism-data synth --shape``)
MIN_SYNTHETIC_SIZE = 8


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SyntheticData(_Model):
    """Phantoms generated once into ``STUDY_DIR/data`` (the same cache, hence the same availability, for all arms).

    ``missing_rates`` (``mr2468`` or ``flair=0.6,...``) draws each training case's available modalities once, as
    PASSION's imbalanced splits do; ``hold_out_site`` keeps that site's cases out of train/val/test (split
    ``heldout``) for adaptation.
    """

    cases: int = Field(24, ge=4)
    shape: tuple[int, int, int] = (48, 48, 48)  # every size at least MIN_SYNTHETIC_SIZE
    seed: int = 0
    sites: int = Field(1, ge=1)
    hold_out_site: str | None = None
    test_fraction: float = Field(0.25, gt=0, lt=1)
    val_fraction: float = Field(0.0, ge=0, lt=1)
    missing_rates: str | None = None

    @field_validator("shape")
    @classmethod
    def _shape(cls, v: tuple[int, int, int]) -> tuple[int, int, int]:
        if min(v) < MIN_SYNTHETIC_SIZE:
            raise ValueError(f"every size must be at least {MIN_SYNTHETIC_SIZE} voxels")
        return v


class DataSpec(_Model):
    """Either an existing prism cache or a synthetic dataset description."""

    cache: Path | None = None
    synthetic: SyntheticData | None = None

    @model_validator(mode="after")
    def _one_source(self) -> DataSpec:
        if (self.cache is None) == (self.synthetic is None):
            raise ValueError("give exactly one of data.cache and data.synthetic")
        return self


class ArmSpec(_Model):
    """One arm: config sections merged over the base, and dotted overrides. ``adapt``: also run the study's
    adaptation curve for this arm's runs (None: when the study has an ``adapt`` section)."""

    config: dict[str, Any] = {}
    overrides: list[str] = []
    adapt: bool | None = None


class AdaptSpec(_Model):
    """Adaptation curves (``prism-eval adapt``) for the runs of arms that ask for them."""

    site: str
    steps: list[int] = list(DEFAULT_STEPS)
    support: int = Field(DEFAULT_SUPPORT, ge=1)
    draws: int = Field(DEFAULT_DRAWS, ge=1)
    lr: float | None = Field(None, gt=0)  # None: the strategy's own step size (fine_tune: the run's eval.adapt_lr)
    rule: str = DEFAULT_RULE  # the run's own Strategy.adapt, or "fine_tune"
    optimizer: str | None = None  # fine_tune only (None: the run's eval.adapt_optimizer)
    patch_size: tuple[int, int, int] | None = None
    split: str | None = None  # where the site's cases come from (default: 'heldout' if the cache has it)
    max_query: int | None = Field(None, ge=1)

    @field_validator("steps")
    @classmethod
    def _steps(cls, v: list[int]) -> list[int]:
        if not v or any(k < 0 for k in v):
            raise ValueError("steps must be a non-empty list of counts >= 0")
        return sorted(set(v))


class ReportSpec(_Model):
    """How the report aggregates: bootstrap size and level, and the thresholds that flag collapsed runs."""

    bootstrap_samples: int = Field(10000, ge=100)
    confidence: float = Field(0.95, gt=0, lt=1)
    seed: int = 0
    collapse_loss_ratio: float = Field(0.95, gt=0)  # late loss >= ratio x early loss: stuck
    collapse_dice: float = Field(0.02, ge=0, le=1)  # every region's median Dice below this: constant prediction
    collapse_stuck_dice: float = Field(0.10, ge=0, le=1)  # a stuck loss flags a run only when no region reaches this


class StudySpec(_Model):
    """What ``prism-study run`` reads (see the module docstring)."""

    name: str = "study"
    description: str = ""
    data: DataSpec
    preset: str | None = None
    config: Path | None = None
    base: dict[str, Any] = {}
    overrides: list[str] = []
    arms: dict[str, ArmSpec]
    reference: str | None = None
    seeds: list[int] = [0]
    adapt: AdaptSpec | None = None
    report: ReportSpec = ReportSpec()

    @field_validator("arms", mode="before")
    @classmethod
    def _arm_shorthand(cls, v: Any) -> Any:
        """An arm may be given as a list of dotted overrides, or left empty."""
        if isinstance(v, dict):
            return {k: ({} if a is None else {"overrides": a} if isinstance(a, list) else a) for k, a in v.items()}
        return v

    @field_validator("arms")
    @classmethod
    def _arm_names(cls, v: dict[str, ArmSpec]) -> dict[str, ArmSpec]:
        import re

        if not v:
            raise ValueError("at least one arm is needed")
        bad = [k for k in v if not re.match(_ARM_NAME, k)]
        if bad:
            raise ValueError(f"arm names are folder names (letters, digits, _ . -): {bad}")
        return v

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v: list[int]) -> list[int]:
        if not v or len(set(v)) != len(v) or any(s < 0 for s in v):
            raise ValueError("seeds must be a non-empty list of distinct integers >= 0")
        return v

    @model_validator(mode="after")
    def _checks(self) -> StudySpec:
        if self.preset and self.config:
            raise ValueError("give at most one of preset and config")
        if self.reference is not None and self.reference not in self.arms:
            raise ValueError(f"reference '{self.reference}' is not an arm ({', '.join(self.arms)})")
        return self

    @property
    def reference_arm(self) -> str:
        return self.reference or next(iter(self.arms))

    def arm_adapts(self, arm: str) -> bool:
        flag = self.arms[arm].adapt
        return self.adapt is not None and (flag is None or flag)


@dataclass(frozen=True)
class PlannedRun:
    """One arm x seed: its folder relative to the study folder and its full config."""

    arm: str
    seed: int
    config: Config
    adapt: bool

    @property
    def folder(self) -> str:
        return f"runs/{self.arm}/seed-{self.seed}"


def load_spec(path: str | Path) -> StudySpec:
    """Read and validate a study spec; errors are one line naming the file and the field.

    Raises:
        ConfigError: unreadable, not UTF-8, not YAML, a key given twice in one mapping (YAML would keep only
            the last: two arms of one name), or a field wrong.
    """
    text = _read_text(path)
    data = load_yaml(path)
    _refuse_duplicate_keys(text, str(path))
    try:
        return StudySpec.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error_spec(exc, str(path))) from None


def _read_text(path: str | Path) -> str:
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the study spec: {exc.strerror}") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError(f"{path}: line {line}: not UTF-8 text (byte 0x{raw[exc.start]:02x}); save the spec as "
                          "UTF-8") from None


def _refuse_duplicate_keys(text: str, source: str) -> None:
    """A key written twice in one mapping is an error naming it and its two lines."""
    def walk(node: yaml.Node, where: str) -> None:
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key, value in node.value:
                name = key.value if isinstance(key, yaml.ScalarNode) else None
                if name is not None and name in seen:
                    field = f"{where}.{name}" if where else name
                    raise ConfigError(f"{source}: line {key.start_mark.line + 1}: {field} is given twice (first "
                                      f"on line {seen[name]}); YAML would keep only the last one")
                if name is not None:
                    seen[name] = key.start_mark.line + 1
                walk(value, f"{where}.{name}" if where and name is not None else (name or where))
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                walk(item, f"{where}.{i}" if where else str(i))

    root = yaml.compose(text, Loader=yaml.SafeLoader)
    if root is not None:
        walk(root, "")


def format_validation_error_spec(exc: ValidationError, source: str) -> str:
    """One line per problem naming the dotted spec field (unknown fields list the allowed ones)."""
    lines = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            lines.append(f"{source}: {field}: unknown field")
        else:
            got = err.get("input")
            got_txt = f" (got {got!r})" if not isinstance(got, dict | list) else ""
            lines.append(f"{source}: {field}: {err['msg']}{got_txt}".replace("Value error, ", ""))
    return "; ".join(lines)


def base_config_dict(spec: StudySpec) -> dict[str, Any]:
    """The preset or config file with the spec's ``base`` sections merged over it."""
    from ..presets import load_preset

    if spec.preset:
        base = load_preset(spec.preset)
    elif spec.config:
        base = load_yaml(spec.config)
    else:
        base = {}
    return _deep_merge(base, spec.base)


def plan_runs(spec: StudySpec, cache: Path, source: str = "study") -> list[PlannedRun]:
    """Every arm x seed with its validated config (arms in spec order, seeds inner). Raises ConfigError."""
    base = base_config_dict(spec)
    runs = []
    for arm, arm_spec in spec.arms.items():
        merged = _deep_merge(base, arm_spec.config)
        for seed in spec.seeds:
            overrides = [*spec.overrides, *arm_spec.overrides, f"train.seed={seed}",
                         f"data.cache={Path(cache).resolve()}"]
            config = build_config(merged, overrides, source=f"{source}: arm '{arm}'")
            runs.append(PlannedRun(arm=arm, seed=seed, config=config, adapt=spec.arm_adapts(arm)))
    return runs


def spec_to_yaml(spec: StudySpec) -> str:
    return yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False)


__all__ = ["AdaptSpec", "ArmSpec", "DataSpec", "PlannedRun", "ReportSpec", "StudySpec", "SyntheticData",
           "base_config_dict", "load_spec", "plan_runs", "spec_to_yaml"]
