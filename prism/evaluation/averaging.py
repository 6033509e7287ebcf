"""Averaging class probabilities of several predictions while staying in logit space.

Test-time mirroring and ensembles both average softmax probabilities. Their result is handed on as the log of the
mean probabilities: a valid logit tensor (its softmax is exactly the mean, its argmax the argmax of the mean), so
sliding-window blending, the arg-max and the probability outputs downstream treat it like any model's logits.
"""

from __future__ import annotations

import math

import torch


class ProbabilityMean:
    """Running mean of ``softmax(logits, dim)`` over the added tensors, kept as log-probabilities (stable
    ``logaddexp`` sums, one tensor of the output's size in memory besides the one being added).

    Args:
        dim: the class dimension of the tensors to be added (e.g. ``-4`` for ``[..., K, D, H, W]``).
    """

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self.count = 0
        self._log_sum: torch.Tensor | None = None

    def add(self, logits: torch.Tensor) -> None:
        """Add one prediction's logits (any float type; computed in float32)."""
        log_p = torch.log_softmax(logits.float(), dim=self.dim)
        self._log_sum = log_p if self._log_sum is None else torch.logaddexp(self._log_sum, log_p)
        self.count += 1

    def result(self) -> torch.Tensor:
        """Float32 ``log(mean of the probabilities)``, the shape of the added tensors.

        Raises:
            ValueError: nothing was added.
        """
        if self._log_sum is None:
            raise ValueError("ProbabilityMean: no prediction was added")
        return self._log_sum - math.log(self.count)
