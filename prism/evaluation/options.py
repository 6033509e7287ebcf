"""EvalOptions: how predictions are made and measured. The one source of the evaluation defaults: the config's
``eval`` section, :func:`prism.evaluation.report.evaluate` and the command-line help all read them from here.

Light on purpose (no torch): the config imports it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

#: HD95 when exactly one of prediction and reference is empty: the diagonal of the 240 x 240 x 155 mm BraTS image
BRATS_EMPTY_HD95 = math.sqrt(240**2 + 240**2 + 155**2)  # 373.128...


@dataclass(frozen=True)
class EvalOptions:
    """How predictions are made and measured (see ``predict_logits`` and ``hd95``)."""

    window: tuple[int, int, int] | None = None  # None: whole volume at once
    overlap: float = 0.5
    sw_batch_size: int = 1
    sigma_scale: float = 0.125
    combos_per_pass: int = 15
    et_postprocess_voxels: int = 0
    compute_hd95: bool = True
    hd95_empty: float = BRATS_EMPTY_HD95  # NaN: pairs with exactly one empty set are left out of the means
    channels_last: bool = False
    stitch_on_cpu: bool = False  # blend sliding-window logits in host memory (large volumes, small GPUs)
    lesion_metrics: bool = False  # also lesion-wise Dice and HD95 as BraTS 2023+ rank them (prism.evaluation.lesion)
    tta: str = "none"  # test-time augmentation: none or mirror (prism.evaluation.tta)

    def settings(self) -> dict[str, object]:
        """For the report: JSON-safe (NaN as None)."""
        out = asdict(self)
        out["window"] = list(self.window) if self.window else None
        if math.isnan(self.hd95_empty):
            out["hd95_empty"] = None
        return out


#: the defaults, for signatures and help texts
DEFAULTS = EvalOptions()
