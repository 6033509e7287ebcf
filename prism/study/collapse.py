"""Collapse judged from what a model predicts, whatever the Dice thresholds.

A run is collapsed when, over its evaluated (case, combination) pairs (``eval.json``'s per-pair label fractions
and per-case constant-prediction Dice, :class:`~prism.evaluation.results.EvalReport`):

* its Dice **equals that of a constant prediction**: for some label, the run's headline Dice is within
  :data:`CONSTANT_DICE_TOLERANCE` of the headline Dice that predicting that label in every voxel would get, in
  every region (a model that predicts tumour everywhere scores a WT Dice of about 2|G|/(N+|G|), e.g. 11% on the
  phantoms, above any fixed "collapsed" threshold);
* it predicts **one label nearly everywhere**: in the median pair, one foreground label covers at least
  :data:`ONE_LABEL_FRACTION` of the volume;
* it labels **more voxels as tumour than the brain holds**: in the median pair, the predicted foreground covers at
  least the share of the volume where the case's available modalities are non-zero.

Reports written before they recorded predictions cannot be judged this way (None).
"""

from __future__ import annotations

import numpy as np

from ..evaluation.results import EvalReport, combination_mean

#: largest headline Dice difference (fraction, every region) at which a run "equals" a constant prediction
CONSTANT_DICE_TOLERANCE = 0.01
#: share of the volume one foreground label must cover, in the median pair, to count as "everywhere"
ONE_LABEL_FRACTION = 0.99


def constant_headline(report: EvalReport) -> np.ndarray:
    """``[labels, regions]``: the headline Dice of predicting each label everywhere, on the pairs the run was
    scored on (the constant Dice of a case repeated over its scored combinations)."""
    assert report.constant_dice is not None
    scored = report.scored  # [cases, combinations]
    out = []
    for k in range(report.constant_dice.shape[1]):
        per_pair = np.repeat(report.constant_dice[:, None, k, :], scored.shape[1], axis=1)
        out.append(combination_mean(np.where(scored[:, :, None], per_pair, np.nan)))
    return np.stack(out) if out else np.zeros((0, len(report.regions)))


def prediction_collapse(report: EvalReport) -> str | None:
    """The reason the run counts as collapsed (see the module docstring), or None (also when the report holds no
    prediction record)."""
    if not report.has_predictions or not report.scored.any():
        return None
    assert report.label_fraction is not None and report.constant_dice is not None
    names = report.label_names or [str(k) for k in range(report.label_fraction.shape[2])]
    run = combination_mean(report.dice)
    constant = constant_headline(report)
    gap = np.nanmax(np.abs(constant - run[None]), axis=1)  # [labels]
    if np.isfinite(gap).any():
        k = int(np.nanargmin(gap))
        if gap[k] <= CONSTANT_DICE_TOLERANCE:
            return (f"its Dice equals that of predicting '{names[k]}' everywhere (" + ", ".join(
                f"{r} {v * 100:.1f} vs {c * 100:.1f}" for r, v, c in zip(report.regions, run, constant[k],
                                                                          strict=True)) + ")")
    pairs = report.label_fraction[report.scored]  # [pairs, labels]
    if pairs.shape[1] > 1:
        foreground = pairs[:, 1:]
        k = int(np.argmax(np.median(foreground, axis=0))) + 1
        share = float(np.median(pairs[:, k]))
        if share >= ONE_LABEL_FRACTION:
            return f"predicts '{names[k]}' in {share * 100:.1f}% of the volume (median over its case-combination pairs)"
        assert report.brain_fraction is not None
        brain = np.repeat(report.brain_fraction[:, None], report.scored.shape[1], axis=1)[report.scored]
        tumour = 1.0 - pairs[:, 0]
        inside = brain > 0
        if inside.any() and float(np.median(tumour[inside] - brain[inside])) >= 0:
            return (f"labels more voxels as tumour than the brain holds (median {np.median(tumour[inside]) * 100:.1f}% "
                    f"of the volume predicted as tumour, brain {np.median(brain[inside]) * 100:.1f}%)")
    return None
