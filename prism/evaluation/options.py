"""EvalOptions: how predictions are made and measured. Its defaults are the config's ``eval`` section's
(:class:`prism.config.EvalConfig`, the one source); :func:`prism.evaluation.report.evaluate` and the
command-line help read them from here.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from ..config import BRATS_EMPTY_HD95, EvalConfig

_CONFIG = EvalConfig()  # the config's eval defaults


@dataclass(frozen=True)
class EvalOptions:
    """How predictions are made and measured (see ``predict_logits`` and ``hd95``)."""

    window: tuple[int, int, int] | None = _CONFIG.window  # None: whole volume at once
    overlap: float = _CONFIG.overlap
    sw_batch_size: int = _CONFIG.sw_batch_size
    sigma_scale: float = 0.125
    combos_per_pass: int = _CONFIG.combos_per_pass
    et_postprocess_voxels: int = _CONFIG.et_postprocess_voxels
    compute_hd95: bool = _CONFIG.hd95
    hd95_empty: float = BRATS_EMPTY_HD95  # NaN: pairs with exactly one empty set are left out of the means
    channels_last: bool = False
    stitch_on_cpu: bool = _CONFIG.stitch_on_cpu  # blend sliding-window logits in host memory (large volumes)
    lesion_metrics: bool = _CONFIG.lesion_metrics  # also lesion-wise Dice and HD95 as BraTS 2023+ rank them
    tta: str = _CONFIG.tta  # test-time augmentation: none or mirror (prism.evaluation.tta)

    def settings(self) -> dict[str, object]:
        """For the report: JSON-safe (NaN as None)."""
        out = asdict(self)
        out["window"] = list(self.window) if self.window else None
        if math.isnan(self.hd95_empty):
            out["hd95_empty"] = None
        return out


#: the defaults, for signatures and help texts
DEFAULTS = EvalOptions()
