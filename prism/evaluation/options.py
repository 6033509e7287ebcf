"""EvalOptions: how predictions are made and measured, the one options object of the evaluation stack.

Its defaults are the config's ``eval`` section's (:class:`prism.config.EvalConfig`, the one source; the
sliding-window ``sigma_scale``, which the config does not hold, is defined here). A run's options are
``EvalOptions.from_config(config.eval, channels_last=config.train.channels_last)``, passed down as one object to
:func:`prism.evaluation.report.evaluate`, scoring, inference, validation during training and prediction; the
command-line defaults and help read :data:`DEFAULTS`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from pydantic import ValidationError

from ..config import EvalConfig, format_validation_error
from ..errors import ConfigError

_CONFIG = EvalConfig()  # the config's eval defaults

#: HD95 when exactly one of prediction and reference is empty under the ``monai`` convention (MONAI itself gives
#: inf or NaN there): the diagonal of the 240 x 240 x 155 mm BraTS image
BRATS_EMPTY_HD95 = math.sqrt(240**2 + 240**2 + 155**2)  # 373.128...
#: the same under the ``brats2023`` convention, and the HD95 of a missed lesion or a false positive lesion-wise:
#: the value the BraTS 2023 challenge code (BraTS-2023-Metrics, ``metrics.py``) assigns
BRATS2023_EMPTY_HD95 = 374.0

#: HD95 definitions (:mod:`prism.evaluation.hausdorff`): MONAI's ``compute_hausdorff_distance(percentile=95)`` and
#: the BraTS 2023 challenge code's surface-area-weighted one (DeepMind's ``compute_robust_hausdorff``)
HD95_CONVENTIONS = ("monai", "brats2023")
#: lesion-wise definitions (:mod:`prism.evaluation.lesion`): the BraTS 2023 challenge code's
LESION_CONVENTIONS = ("brats2023",)
_EMPTY_BY_CONVENTION = {"monai": BRATS_EMPTY_HD95, "brats2023": BRATS2023_EMPTY_HD95}


def convention_empty_hd95(convention: str) -> float:
    """The HD95 a convention gives a pair where exactly one of prediction and reference is empty."""
    try:
        return _EMPTY_BY_CONVENTION[convention]
    except KeyError:
        raise ConfigError(f"eval.hd95_convention: one of {', '.join(HD95_CONVENTIONS)}, got {convention!r}") from None


@dataclass(frozen=True)
class EvalOptions:
    """How predictions are made and measured (see ``predict_logits`` and ``hd95``).

    Raises:
        ConfigError: a value out of range (one line naming the ``eval`` field).
    """

    window: tuple[int, int, int] | None = _CONFIG.window  # None: whole volume at once
    overlap: float = _CONFIG.overlap
    sw_batch_size: int = _CONFIG.sw_batch_size
    sigma_scale: float = 0.125
    combos_per_pass: int = _CONFIG.combos_per_pass
    et_postprocess_voxels: int = _CONFIG.et_postprocess_voxels
    compute_hd95: bool = _CONFIG.hd95
    hd95_convention: str = _CONFIG.hd95_convention  # one of HD95_CONVENTIONS
    hd95_empty: float | None = None  # None: the convention's value; NaN: such pairs are left out of the means
    channels_last: bool = False
    stitch_on_cpu: bool = _CONFIG.stitch_on_cpu  # blend sliding-window logits in host memory (large volumes)
    lesion_metrics: bool = _CONFIG.lesion_metrics  # also lesion-wise Dice and HD95 (the BraTS 2023 challenge code's)
    lesion_convention: str = "brats2023"  # one of LESION_CONVENTIONS
    tta: str = _CONFIG.tta  # test-time augmentation: none or mirror (prism.evaluation.tta)

    def __post_init__(self) -> None:
        convention_empty_hd95(self.hd95_convention)
        if self.lesion_convention not in LESION_CONVENTIONS:
            raise ConfigError(f"eval.lesion_convention: one of {', '.join(LESION_CONVENTIONS)}, got "
                              f"{self.lesion_convention!r}")
        if self.window is not None and (len(self.window) != 3 or any(int(w) < 1 for w in self.window)):
            raise ConfigError(f"eval.window: expected three sizes >= 1, got {list(self.window)}")
        checks = (("overlap", 0 <= self.overlap < 1, "in [0, 1)"), ("sw_batch_size", self.sw_batch_size >= 1, ">= 1"),
                  ("sigma_scale", math.isfinite(self.sigma_scale) and self.sigma_scale > 0, "finite and > 0"),
                  ("combos_per_pass", self.combos_per_pass >= 1, ">= 1"),
                  ("et_postprocess_voxels", self.et_postprocess_voxels >= 0, ">= 0"),
                  ("hd95_empty", self.hd95_empty is None or math.isnan(self.hd95_empty) or 0 <= self.hd95_empty
                   < math.inf, "a finite number of mm >= 0, or NaN"))
        for name, ok, what in checks:
            if not ok:
                raise ConfigError(f"eval.{name}: must be {what}, got {getattr(self, name)}")

    @classmethod
    def from_config(cls, section: EvalConfig, *, channels_last: bool = False) -> EvalOptions:
        """The options of a config's ``eval`` section (``channels_last``: the run's ``train.channels_last``).

        ``hd95_empty``: ``"convention"`` gives the convention's value, ``None`` (null) NaN, i.e. such pairs are left
        out of the means.
        """
        empty = section.hd95_empty
        return cls(window=tuple(section.window) if section.window else None,  # type: ignore[arg-type]
                   overlap=section.overlap, sw_batch_size=section.sw_batch_size,
                   combos_per_pass=section.combos_per_pass, et_postprocess_voxels=section.et_postprocess_voxels,
                   compute_hd95=section.hd95, hd95_convention=section.hd95_convention,
                   hd95_empty=None if empty == "convention" else math.nan if empty is None else float(empty),
                   channels_last=channels_last, stitch_on_cpu=section.stitch_on_cpu,
                   lesion_metrics=section.lesion_metrics, tta=section.tta)

    @property
    def empty_hd95(self) -> float:
        """The HD95 of a pair where exactly one set is empty (``hd95_empty``, or the convention's value)."""
        return convention_empty_hd95(self.hd95_convention) if self.hd95_empty is None else float(self.hd95_empty)

    def settings(self) -> dict[str, object]:
        """For the report: JSON-safe, with the empty-set HD95 resolved (None: left out of the means)."""
        out = asdict(self)
        out["window"] = list(self.window) if self.window else None
        empty = self.empty_hd95
        out["hd95_empty"] = None if math.isnan(empty) else empty
        if not self.compute_hd95:
            out["hd95_convention"] = None
        if not self.lesion_metrics:
            out["lesion_convention"] = None
        return out


#: the defaults, for signatures and help texts
DEFAULTS = EvalOptions()


def eval_config_with(section: EvalConfig, changes: Mapping[str, Any], *, source: str = "command line") -> EvalConfig:
    """``section`` with ``changes`` (``eval`` field name -> value, e.g. from command-line flags) applied and checked
    as the config checks them.

    Raises:
        ConfigError: a change the config refuses (one line naming ``eval.<field>``).
    """
    try:
        return EvalConfig.model_validate({**section.model_dump(), **changes})
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source).replace(f"{source}: ", f"{source}: eval.")) from None
