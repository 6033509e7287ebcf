"""Validation during training (nnU-Net style): mean Dice on a few validation cases and a cheap subset of the
modality combinations, every ``train.val_every`` steps; the trainer keeps ``best.pt`` by this score.

The subset is each single modality and all modalities together (M + 1 of the 2^M - 1 combinations): the
extremes of the missing-modality range, so a model that only learned one modality, or only the full set, shows.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..backbone import Backbone
from ..data.cache_reader import CacheReader
from ..evaluation.inference import predict_combinations
from ..evaluation.metrics import region_dice, regions_for
from ..evaluation.options import DEFAULTS, EvalOptions
from ..evaluation.scoring import scored_combinations
from .observers import Observer

if TYPE_CHECKING:  # pragma: no cover
    from .trainer import Trainer


def validation_masks(num_modalities: int) -> torch.Tensor:
    """bool ``[M + 1, M]``: one row per single modality, then all modalities (one row when ``M == 1``)."""
    singles = torch.eye(num_modalities, dtype=torch.bool)
    if num_modalities == 1:
        return singles
    return torch.cat([singles, torch.ones(1, num_modalities, dtype=torch.bool)])


@torch.no_grad()
def validation_dice(model: Backbone, reader: CacheReader, case_ids: Sequence[str], *, device: torch.device,
                    amp_dtype: torch.dtype | None = None, options: EvalOptions = DEFAULTS) -> float:
    """Mean Dice over cases, the combinations of :func:`validation_masks` each case can supply, and regions.

    Args:
        model: the backbone (put in eval mode here and back in its previous mode after).
        reader: the cache holding ``case_ids``.
        case_ids: validation cases.
        device, amp_dtype: as for :func:`prism.evaluation.inference.predict_combinations`.
        options: the run's evaluation options (``EvalOptions.from_config(config.eval, ...)``); validation predicts
            the combinations of a case in one pass and without test-time augmentation, whatever they say.

    Returns:
        The mean Dice in [0, 1] (NaN when no case can supply any of the combinations).
    """
    masks = validation_masks(reader.num_modalities)
    options = dataclasses.replace(options, combos_per_pass=int(masks.shape[0]), tta="none")
    regions = regions_for(reader.labels)
    num_classes = max(reader.labels) + 1
    was_training = model.training
    model.eval()
    scores: list[np.ndarray] = []
    try:
        for case_id in case_ids:
            scored = scored_combinations(masks, reader.info(case_id).availability)
            if not scored.any():
                continue
            image, label = reader.read_case(case_id)
            pred = predict_combinations(model, torch.from_numpy(image), masks[scored], device=device,
                                        amp_dtype=amp_dtype, options=options)
            scores.append(region_dice(pred, torch.from_numpy(label), regions, num_classes).numpy().ravel())
    finally:
        model.train(was_training)
    return float(np.concatenate(scores).mean()) if scores else float("nan")


class Validation(Observer):
    """Validates every ``every`` steps and at the last step (rank 0): a new best score writes ``best.pt``
    (:meth:`Trainer.validate`, with the ``train.ema`` average when there is one), and observers get
    ``on_validation`` (the ``csv`` logger writes the scores to ``RUN/val_log.csv``)."""

    name = "validation"
    order = 50

    def __init__(self, every: int) -> None:
        self.every = every

    def on_step_end(self, trainer: Trainer, parts: Mapping[str, Any]) -> None:
        step = trainer.ctx.step
        if step % self.every and step != trainer.end_step:
            return
        score = trainer.validate()
        if score is None:
            return
        trainer.observers.notify("on_validation", trainer, score, trainer.best_val)
