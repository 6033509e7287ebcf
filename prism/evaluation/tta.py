"""Test-time augmentation: a window predictor wrapped so that it predicts on mirrored copies of its input.

``mirror`` runs the predictor on all 8 combinations of flips over the three spatial axes (no flip included),
flips each output back and averages the class probabilities: nnU-Net's default at inference (Isensee et al.,
"nnU-Net", Nature Methods 18, 2021, Methods, inference). nnU-Net v2 averages the flips' logits instead
(``nnunetv2/inference/predict_from_raw_data.py``, ``_internal_maybe_mirror_and_predict``); prism averages
probabilities, as nnU-Net v1 did.

The wrapper changes nothing else: it takes and returns the predictor's tensors (``[n, M, D, H, W]`` in, logits
with the classes at dimension -4 out), so it composes with MONAI's Gaussian-blended sliding windows (each window
is mirrored) and with the batched pass over modality combinations (each flip runs every combination at once).
Its output is ``log(mean probabilities)`` (:class:`~prism.evaluation.averaging.ProbabilityMean`), whose softmax is
the mean probability and whose argmax is the argmax of the mean.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import torch

from ..errors import ConfigError
from .averaging import ProbabilityMean

#: the test-time augmentation modes (``eval.tta``, ``--tta``)
TTA_MODES = ("none", "mirror")

#: every subset of the spatial axes (counted from the end: D, H, W), the empty one (no flip) first
MIRROR_FLIPS: tuple[tuple[int, ...], ...] = tuple(
    axes for r in range(4) for axes in itertools.combinations((-3, -2, -1), r))

#: a window predictor: images ``[n, M, D, H, W]`` -> logits ``[n, ..., K, D, H, W]``
Predictor = Callable[[torch.Tensor], torch.Tensor]


def _flip(x: torch.Tensor, axes: tuple[int, ...]) -> torch.Tensor:
    return torch.flip(x, axes) if axes else x


def mirrored(predictor: Predictor) -> Predictor:
    """``predictor`` averaged over the 8 mirrorings of its input.

    Args:
        predictor: images ``[n, M, D, H, W]`` -> logits ``[n, ..., K, D, H, W]`` (classes at dimension -4).

    Returns:
        A predictor of the same shapes giving float32 ``log(mean_f softmax(f(predictor(f(x)))))`` over the flips
        ``f`` of :data:`MIRROR_FLIPS` (each flip is its own inverse); the 8 calls run one after the other.
    """
    def predict(x: torch.Tensor) -> torch.Tensor:
        mean = ProbabilityMean(dim=-4)
        for axes in MIRROR_FLIPS:
            mean.add(_flip(predictor(_flip(x, axes)), axes))
        return mean.result()

    return predict


def with_tta(predictor: Predictor, tta: str) -> Predictor:
    """``predictor`` itself for ``tta='none'``, :func:`mirrored` for ``'mirror'``.

    Raises:
        ConfigError: an unknown mode (names ``eval.tta``).
    """
    if tta == "none":
        return predictor
    if tta == "mirror":
        return mirrored(predictor)
    raise ConfigError(f"eval.tta: unknown test-time augmentation {tta!r}; allowed: {', '.join(TTA_MODES)}")
