"""The run configuration: pydantic models (unknown fields are errors), YAML files and dotted CLI overrides."""

from __future__ import annotations

import difflib
import math
import warnings
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from .adapt import ADAPT_DEFAULTS
from .errors import ConfigError


class _Model(BaseModel):
    # allow_inf_nan=False: every float field of every section refuses NaN and infinities (optim.lr=.inf, ...)
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


#: the largest seed: ``seed + 1`` still fits the 64-bit seeds of torch generators
MAX_SEED = 2**63 - 2


def _sizes_in(low: int, high: int, what: str) -> Any:
    """A validator for a tuple of voxel sizes: each in ``[low, high]``."""
    def check(v: tuple[int, ...] | None) -> tuple[int, ...] | None:
        if v is not None and any(not low <= s <= high for s in v):
            bound = "positive" if low == 1 else f"at least {low}"
            raise ValueError(f"every {what} must be {bound} and at most {high}")
        return v
    return check


class SynthConfig(_Model):
    """The built-in synthetic dataset used when no cache is given."""

    cases: int = Field(20, ge=2, le=100_000)  # number of phantom cases
    shape: tuple[int, int, int] = (48, 48, 48)  # volume size D H W (each 8 to 512)
    seed: int = Field(0, ge=0, le=MAX_SEED)  # generation seed
    test_fraction: float = Field(0.25, gt=0, lt=1)  # share of the cases in the test split

    _shape = field_validator("shape")(_sizes_in(8, 512, "synthetic volume size"))


def _field_error(field: str, message: str) -> PydanticCustomError:
    """A validation error reported as ``field: message`` (the dotted field given, not the validator's own)."""
    return PydanticCustomError("prism_field", "{message}", {"message": message, "field": field})


class AugmentStep(_Model):
    """One transform of a ``data.augment`` list; the [augmentation reference](augmentation.md) lists each with its
    options."""

    name: str  # the transform: spatial, mirror, gaussian_noise, gaussian_blur, brightness, contrast, ...
    options: dict[str, Any] = {}  # the transform's options (each has nnU-Net's value by default)


def _augment_step(item: Any, i: int) -> dict[str, Any]:
    """Item ``i`` of a ``data.augment`` list as ``{"name", "options"}``.

    Raises:
        ValueError: ``data.augment.<i>[.key]: problem`` (an unknown key with its close match, a missing name, ...).
    """
    try:
        return AugmentStep.model_validate(item).model_dump()
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in (f"data.augment.{i}", *err["loc"]))
        if err["type"] == "extra_forbidden":
            close = difflib.get_close_matches(str(err["loc"][-1]), list(AugmentStep.model_fields), n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise ValueError(f"{where}: unknown field; {hint}allowed: {', '.join(AugmentStep.model_fields)}") from None
        if err["type"] == "model_type":
            raise ValueError(f"{where}: a transform is a mapping {{name: ..., options: {{...}}}} (got "
                             f"{item!r})") from None
        raise ValueError(f"{where}: {err['msg']}") from None


class DataConfig(_Model):
    cache: Path | None = None  # None: the built-in synthetic dataset (generated once in the user cache folder)
    synthetic: SynthConfig = SynthConfig()
    train_split: str = "train"  # cache split that training patches come from
    # cross-validation fold k (prism-data split CACHE --folds K writes them): training patches come from split
    # fold<k>_train and validation (train.val_every) uses fold<k>_val, instead of train_split and train.val_split
    fold: int | None = Field(None, ge=0, le=999)
    test_split: str = "test"  # not read by the engine: eval.split chooses what is evaluated
    patch_size: tuple[int, int, int] = (32, 32, 32)  # training patch D H W (multiples of the backbone's size_divisor)
    batch_size: int = Field(2, ge=1, le=65_536)  # global batch (split over the processes under torchrun)
    foreground_fraction: float = Field(1 / 3, ge=0, le=1)  # share of patches centred on a label > 0 voxel
    # training augmentation: "light" (flip, rotate_* and intensity_* below), "nnunet" (nnU-Net's default 3D
    # pipeline, written out as its list in the run's config.yaml) or a list of transforms
    augment: Literal["light"] | list[AugmentStep] = "light"
    flip: bool = True  # random flips along each spatial axis (data.augment: light)
    rotate_degrees: float = Field(0.0, ge=0, le=45)  # random rotation per axis in [-r, r] (0: off)
    rotate_probability: float = Field(0.2, ge=0, le=1)  # chance that a sample is rotated (rotate_degrees > 0)
    intensity_scale: float = Field(0.0, ge=0, lt=1)  # each channel x * U(1 - s, 1 + s) + U(-t, t)
    intensity_shift: float = Field(0.0, ge=0)  # t of the intensity change above (0: off)
    num_workers: int | None = Field(None, ge=0, le=256)  # None: 0 on CPU, 4 on CUDA

    _patch = field_validator("patch_size")(_sizes_in(1, 4096, "patch size"))

    @field_validator("augment", mode="before")
    @classmethod
    def _augment(cls, v: Any) -> Any:
        from .data.transforms import resolve_augment

        try:
            if isinstance(v, list | tuple):
                v = [_augment_step(item, i) for i, item in enumerate(v)]
            return resolve_augment(v)
        except ValueError as exc:
            field, _, message = str(exc).partition(": ")
            raise _field_error(field, message) from None

    @model_validator(mode="after")
    def _light_fields(self) -> DataConfig:
        if self.augment == "light":
            return self
        light = DataConfig.model_fields
        for name, where in (("flip", "'mirror'"), ("rotate_degrees", "'spatial' (rotate_degrees)"),
                            ("intensity_scale", "'brightness'"), ("intensity_shift", "'shift_intensity'")):
            if getattr(self, name) != light[name].default:
                raise _field_error(f"data.{name}", f"configures data.augment: light only; with a transform list, "
                                                   f"use {where}")
        return self

    @model_validator(mode="after")
    def _fold_or_split(self) -> DataConfig:
        if self.fold is not None and self.train_split != "train":
            raise ValueError(f"data.fold chooses the training split (fold{self.fold}_train): leave data.train_split "
                             f"unset (it is '{self.train_split}')")
        return self


def _logger_name(item: Any) -> str | None:
    """The name of one ``train.loggers`` item (a name, a mapping or a PluginChoice)."""
    if isinstance(item, str):
        return item
    if isinstance(item, dict):
        name = item.get("name")
        return name if isinstance(name, str) else None
    return getattr(item, "name", None)


class PluginChoice(_Model):
    name: str  # a registered plugin name (prism-plugins lists them)
    options: dict[str, Any] = {}  # keyword arguments of the plugin's factory


class ModelChoice(PluginChoice):
    """The backbone; ``init_from`` starts it from a trained run's weights (its folder or a ``.pt`` checkpoint)."""

    init_from: Path | None = None  # start from a trained run's weights (its folder or a .pt checkpoint)


class LossTermConfig(PluginChoice):
    weight: float = 1.0  # multiplies the term's total


class MaskingConfig(_Model):
    """Masking policies by role: ``train`` is the one training batches use; strategies may ask for others."""

    train: PluginChoice = PluginChoice(name="random")
    extra: dict[str, PluginChoice] = {}


class OptimConfig(_Model):
    """The optimizer and its learning-rate schedule. A step of the schedule is an optimisation step
    (``train.steps`` of them; with ``train.accumulate`` each one sums the gradients of several batches)."""

    name: Literal["adamw", "adam", "sgd"] = "adamw"  # the optimizer
    lr: float = Field(3e-3, gt=0)  # peak learning rate (after the warm-up; optim.schedule decays it over train.steps)
    weight_decay: float = Field(1e-5, ge=0)  # weight decay
    momentum: float = Field(0.99, ge=0, lt=1)  # sgd only (nnU-Net's default, with nesterov)
    # the learning rate after the warm-up, over the T = train.steps - warmup_steps steps t left: poly
    # (lr * (1 - t / T) ** poly_power, nnU-Net's), cosine (min_lr + (lr - min_lr) * (1 + cos(pi t / T)) / 2) or
    # constant (lr)
    schedule: Literal["poly", "cosine", "constant"] = "poly"
    poly_power: float = Field(0.9, ge=0)  # schedule poly: lr = peak * (1 - t / T) ** poly_power
    # linear warm-up over the first N steps, from warmup_start * lr up to lr, before the schedule (0: none)
    warmup_steps: int = Field(0, ge=0)
    warmup_start: float = Field(0.01, gt=0, le=1)  # the first warm-up step's learning rate, as a fraction of lr
    min_lr: float = Field(0.0, ge=0)  # schedule cosine: the learning rate it ends at (below lr)
    grad_clip: float | None = Field(12.0, gt=0)  # clip the gradient norm to this (None: no clipping)


class EarlyStopConfig(_Model):
    """Stop training when the validation score has not improved for ``patience`` validations in a row (needs
    ``train.val_every``). The final checkpoint is written and the run is evaluated as after a normal end; a resume
    of a stopped run trains no further unless ``patience`` is raised."""

    metric: Literal["val_dice"] = "val_dice"  # the score watched: validation mean Dice (higher is better)
    patience: int = Field(5, ge=1, le=100_000)  # validations in a row without improvement that stop the run
    min_delta: float = Field(0.0, ge=0, le=1)  # an improvement must raise the best score by more than this


#: the loggers a run writes to when ``train.loggers`` is not given
DEFAULT_LOGGERS = ("csv", "tensorboard")


class TrainConfig(_Model):
    steps: int = Field(200, ge=1)  # optimisation steps
    epoch_length: int = Field(250, ge=1)  # steps per "epoch": stateful losses update once per epoch
    seed: int = Field(0, ge=0, le=MAX_SEED)  # seed of the weights, patch positions and masks
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: CUDA when available, else CPU
    amp: Literal["bf16", "fp16", "none"] = "bf16"  # used on CUDA only
    deterministic: bool = False  # deterministic algorithms where torch has them (slower)
    channels_last: bool = True  # channels-last 3D memory format (faster convolutions on CPU and GPU)
    # torch.compile: false; true or "model" (the model); "step" (forward, losses and backward as one compiled
    # callable). Refused by strategies whose inner loops it would break (prism/engine/compiled.py)
    compile: bool | Literal["model", "step"] = False
    cuda_graphs: bool = False  # capture the standard step into one CUDA graph and replay it (CUDA, static shapes)
    # experiment trackers (logger plugins, prism-plugins lists them) that receive the config, the log rows,
    # validation scores, the evaluation's heatmap and summary: a name, or {name: mlflow, options: {...}}
    loggers: list[PluginChoice] = [PluginChoice(name=n) for n in DEFAULT_LOGGERS]
    checkpoint_every: int = Field(100, ge=1)  # write last.pt every N steps
    log_every: int = Field(25, ge=1)  # log the losses every N steps
    # a non-finite loss part or gradient: stop (after the last good checkpoint, exit 3) or skip the step's update
    nonfinite: Literal["stop", "skip"] = "stop"
    threads: int | None = Field(None, ge=1, le=4096)  # CPU threads (torch.set_num_threads)
    # validation during training: mean Dice on val_cases cases of val_split, single modalities and all of them,
    # every val_every steps (None: off); best.pt keeps the best-scoring weights beside last.pt
    val_every: int | None = Field(None, ge=1)
    val_split: str = "val"  # split validated on (train.val_every)
    val_cases: int = Field(5, ge=1)  # cases validated each time
    # stop when the validation score stops improving (needs val_every; None: train all train.steps)
    early_stop: EarlyStopConfig | None = None
    # exponential moving average of the weights with this decay d: after every step ema = d * ema + (1 - d) *
    # weights, starting from the initial weights (None: off). Validation, best.pt, the evaluation, prism-eval and
    # prism-predict use the average (the checkpoints' "model"); training continues from the weights themselves
    ema: float | None = Field(None, gt=0, lt=1)
    # gradient accumulation: one optimisation step from the gradients of this many batches of data.batch_size
    # (effective batch data.batch_size * accumulate). train.steps, the LR schedule, log_every, checkpoint_every,
    # val_every and epoch_length count optimisation steps. Strategies standard and meta_drop; others refuse it
    accumulate: int = Field(1, ge=1, le=4096)

    @model_validator(mode="before")
    @classmethod
    def _tensorboard_flag(cls, data: Any) -> Any:
        """The deprecated ``train.tensorboard`` flag, mapped onto ``train.loggers``."""
        if not isinstance(data, dict) or "tensorboard" not in data:
            return data
        data = dict(data)
        flag = data.pop("tensorboard")
        if isinstance(flag, str) and flag.strip().lower() in {"true", "false"}:
            flag = flag.strip().lower() == "true"
        if not isinstance(flag, bool):
            raise ValueError(f"tensorboard (deprecated: use train.loggers) must be true or false (got {flag!r})")
        warnings.warn("train.tensorboard is deprecated: list the loggers in train.loggers (the default "
                      f"{list(DEFAULT_LOGGERS)}; train.loggers=[csv] leaves TensorBoard out)", DeprecationWarning,
                      stacklevel=2)
        loggers = list(data.get("loggers", DEFAULT_LOGGERS))
        names = [_logger_name(item) for item in loggers]
        if flag and "tensorboard" not in names:
            loggers.append("tensorboard")
        elif not flag:
            loggers = [item for item, name in zip(loggers, names, strict=True) if name != "tensorboard"]
        data["loggers"] = loggers
        return data

    @field_validator("loggers", mode="before")
    @classmethod
    def _logger_names(cls, v: Any) -> Any:
        """A bare name stands for ``{name: NAME}``; a name listed twice is an error."""
        if not isinstance(v, list | tuple):
            return v
        items = [{"name": item} if isinstance(item, str) else item for item in v]
        names = [_logger_name(item) for item in items]
        twice = sorted({n for n in names if n is not None and names.count(n) > 1})
        if twice:
            raise ValueError(f"logger {', '.join(repr(n) for n in twice)} is listed more than once")
        return items


class EvalConfig(_Model):
    split: str = "test"  # cache split to evaluate
    max_cases: int | None = Field(None, ge=1)  # evaluate only the first N cases (None: all)
    # the one source of these defaults: prism.evaluation.options.EvalOptions reads them from here
    et_postprocess_voxels: int = Field(0, ge=0)  # fewer ET voxels count as none (BraTS 500)
    window: tuple[int, int, int] | None = None  # None: whole volumes; else Gaussian sliding windows
    overlap: float = Field(0.5, ge=0, lt=1)  # sliding-window overlap
    sw_batch_size: int = Field(1, ge=1)  # windows per forward pass
    combos_per_pass: int = Field(15, ge=1)  # modality combinations per forward pass
    hd95: bool = True  # also HD95 (mm), besides Dice
    hd95_convention: Literal["monai", "brats2023"] = "monai"  # whose HD95: MONAI's, or BraTS 2023's
    # HD95 (mm) when exactly one set is empty: "convention" (monai 373.13, brats2023 374), a number, or None (left out)
    hd95_empty: float | Literal["convention"] | None = "convention"
    stitch_on_cpu: bool = False  # blend sliding-window logits in host memory (large volumes)
    lesion_metrics: bool = False  # also the BraTS 2023 challenge's lesion-wise Dice and HD95
    tta: Literal["none", "mirror"] = "none"  # test-time augmentation: mirror = mean probabilities of the 8 flips
    adapt_site: str | None = None  # fast adaptation to this held-out site (off when None)
    adapt_cases: int = Field(1, ge=1)  # support cases of the site (N)
    # the fine-tuning defaults are prism.adapt.ADAPT_DEFAULTS; a strategy with its own rule (MAML) keeps its step size
    adapt_steps: int = Field(ADAPT_DEFAULTS.steps, ge=0)  # fine-tuning steps (K)
    adapt_lr: float = Field(ADAPT_DEFAULTS.lr, gt=0)  # fine-tuning learning rate
    adapt_optimizer: Literal["sgd", "adam"] = ADAPT_DEFAULTS.optimizer  # fine-tuning optimizer
    adapt_patch_size: tuple[int, int, int] | None = None  # fine-tuning patch (None: whole volumes)
    adapt_split: str | None = None  # split the site's cases come from (None: the evaluated cases)
    adapt_seed: int = Field(0, ge=0, le=MAX_SEED)  # seed of the support draw and fine-tuning

    _window = field_validator("window", "adapt_patch_size")(_sizes_in(1, 4096, "window or patch size"))

    @field_validator("hd95_empty", mode="before")
    @classmethod
    def _hd95_empty(cls, v: Any) -> Any:
        if v is None or v == "convention":
            return v
        try:
            value = math.nan if isinstance(v, bool) else float(v)
        except (TypeError, ValueError):
            value = math.nan
        if not (math.isfinite(value) and value >= 0):
            raise ValueError("a number of mm >= 0, 'convention' or null (left out)")
        return value


class Config(_Model):
    """Everything a run needs. ``prism-train`` writes the resolved copy into the run folder."""

    data: DataConfig = DataConfig()
    model: ModelChoice = ModelChoice(name="multi_unet")
    losses: list[LossTermConfig] = [LossTermConfig(name="fuse")]
    masking: MaskingConfig = MaskingConfig()
    strategy: PluginChoice = PluginChoice(name="standard")
    optim: OptimConfig = OptimConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    output_dir: Path | None = None  # None: runs/<strategy>-<time> in the working directory

    @field_validator("losses")
    @classmethod
    def _losses_non_empty(cls, v: list[LossTermConfig]) -> list[LossTermConfig]:
        if not v:  # a field validator, so the message names the field
            raise ValueError("at least one loss term is needed")
        return v

    def training_splits(self) -> tuple[str, str]:
        """(training split, validation split) of the run: ``fold<k>_train`` and ``fold<k>_val`` when ``data.fold``
        is set (``prism-data split --folds``), else ``data.train_split`` and ``train.val_split``."""
        if self.data.fold is None:
            return self.data.train_split, self.train.val_split
        from .data.splits import fold_split_names

        return fold_split_names(self.data.fold)

    @model_validator(mode="after")
    def _training_options(self) -> Config:
        o = self.optim
        if o.min_lr and o.schedule != "cosine":
            raise ValueError(f"optim.min_lr: only the cosine schedule ends at min_lr (optim.schedule is "
                             f"'{o.schedule}'); leave it at 0")
        if o.min_lr >= o.lr:
            raise ValueError(f"optim.min_lr: must be below optim.lr ({o.min_lr:g} >= {o.lr:g})")
        if self.optim.warmup_steps >= self.train.steps:
            raise ValueError(f"optim.warmup_steps: {self.optim.warmup_steps} warm-up steps leave none of the "
                             f"train.steps={self.train.steps} for optim.schedule; use fewer")
        if self.train.early_stop is not None and not self.train.val_every:
            raise ValueError("train.early_stop: watches the validation Dice, so it needs train.val_every (e.g. "
                             "train.val_every=50)")
        return self

    @model_validator(mode="after")
    def _fold_validation_split(self) -> Config:
        if self.data.fold is not None and self.train.val_split != "val":
            raise ValueError(f"data.fold chooses the validation split (fold{self.data.fold}_val): leave "
                             f"train.val_split unset (it is '{self.train.val_split}')")
        return self


# ---- loading and overrides -----------------------------------------------------------------------------------

def _dotted(loc: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in loc)


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The pydantic model class that holds the field at ``loc`` (for listing allowed fields)."""
    model: Any = Config
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part) if isinstance(model, type) and issubclass(model, BaseModel) else None
        if field is None:
            return None
        ann = field.annotation
        args = getattr(ann, "__args__", ())
        candidates = [ann, *args]
        model = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if model is None:
            return None
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def format_validation_error(exc: ValidationError, source: str = "config") -> str:
    """One line per problem, naming the dotted field and what is allowed."""
    lines = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        field = _dotted(loc)
        if err["type"] == "prism_field":  # a validator that names the exact field (deeper than its own)
            lines.append(f"{source}: {err['ctx']['field'] or field}: {err['ctx']['message']}")
            continue
        if err["type"] == "extra_forbidden":
            holder = _model_at(loc)
            allowed = sorted(holder.model_fields) if holder else []
            close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            lines.append(f"{source}: {field}: unknown field; {hint}allowed: {', '.join(allowed)}")
        else:
            got = err.get("input")
            got_txt = f" (got {got!r})" if not isinstance(got, dict | list) and field else ""
            lines.append(f"{source}: {field + ': ' if field else ''}{err['msg']}{got_txt}")
    return "; ".join(lines)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b.c=value`` -> (["a", "b", "c"], value parsed as YAML: numbers, booleans, lists, null)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like field.sub=value (e.g. optim.lr=1e-3)")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r} has an empty field name")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    if isinstance(value, str):  # YAML 1.1 reads 1e-3 as a string; numbers are what users mean
        try:
            value = float(value) if any(c in value.lower() for c in ".e") else int(value)
        except ValueError:
            pass
    return key.split("."), value


def _set_dotted(data: dict[str, Any], path: list[str], value: Any, text: str) -> None:
    node: Any = data
    for i, part in enumerate(path[:-1]):
        if isinstance(node, list):
            try:
                node = node[int(part)]
            except (ValueError, IndexError):
                raise ConfigError(f"override {text!r}: {'.'.join(path[:i + 1])} is not a valid list index") from None
            continue
        nxt = node.get(part)
        if nxt is None:
            nxt = {}
            node[part] = nxt
        if not isinstance(nxt, dict | list):
            raise ConfigError(f"override {text!r}: {'.'.join(path[:i + 1])} is a value, not a section")
        node = nxt
    last = path[-1]
    if isinstance(node, list):
        try:
            node[int(last)] = value
        except (ValueError, IndexError):
            raise ConfigError(f"override {text!r}: {last} is not a valid list index") from None
    else:
        node[last] = value


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start}); "
                          "save the config as UTF-8") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}:{where} invalid YAML: {getattr(exc, 'problem', exc)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file must hold a mapping of sections, got {type(data).__name__}")
    return data


def build_config(base: dict[str, Any] | None = None, overrides: list[str] | tuple[str, ...] = (),
                 source: str = "config") -> Config:
    """Validate ``base`` (e.g. loaded YAML) with dotted ``overrides`` applied; errors name the dotted field."""
    data = Config().model_dump(mode="python") if base is None else _deep_merge(Config().model_dump(), base)
    for text in overrides:
        path, value = parse_override(text)
        _set_dotted(data, path, value, text)
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source)) from None


def _deep_merge(defaults: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    out = dict(defaults)
    for key, value in given.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key not in {"options", "extra"}:
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def config_to_yaml(config: Config) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
