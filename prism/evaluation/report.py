"""Evaluate a model on every combination of every case of a split (and optionally fast adaptation), as a report.

``evaluate(...)`` returns an :class:`EvalReport`; ``write_report(report, run_dir)`` writes eval.json,
eval_cases.csv, eval.md and eval_dice.png as one set, and ``report_markdown(report)`` gives eval.md's text.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from ..adapt import AdaptLossFn
from ..backbone import Backbone
from ..data.cache_reader import CacheReader
from .adaptation import AdaptationSettings, AdaptRule, fine_tune_rule, load_support, site_cases
from .options import DEFAULTS, EvalOptions
from .provenance import checkpoint_record, report_matches_checkpoint
from .results import AdaptationResult, EvalReport, combination_mean
from .scoring import evaluate_cases
from .writers import report_markdown, write_report

__all__ = ["AdaptationResult", "AdaptationSettings", "EvalOptions", "EvalReport", "checkpoint_record",
           "combination_mean", "evaluate", "report_markdown", "report_matches_checkpoint", "write_report"]


def evaluate(model: Backbone, reader: CacheReader, case_ids: Sequence[str], *, device: torch.device,
             amp_dtype: torch.dtype | None = None, options: EvalOptions = DEFAULTS,
             adaptation: AdaptationSettings | None = None, adapt_rule: AdaptRule | None = None,
             adapt_loss: AdaptLossFn | None = None, on_case: Callable[[str], None] | None = None) -> EvalReport:
    """Dice and HD95 per case, combination and region for ``case_ids``, every combination of a case batched.

    How predictions are made and measured is ``options`` (a run's: ``EvalOptions.from_config(config.eval,
    channels_last=config.train.channels_last)``): whole volumes or Gaussian-blended sliding windows, test-time
    mirroring, the HD95 convention (:mod:`prism.evaluation.hausdorff`) and its value for a pair with exactly one
    empty set. ``adaptation`` (a run's: ``AdaptationSettings.from_config(config.eval)``) adds a fast-adaptation
    comparison on a held-out site to the same report, adapted by ``adapt_rule`` (default: fine-tuning;
    :func:`~prism.evaluation.adaptation.evaluation_rule` gives a run's strategy's own rule) on ``adapt_loss``
    (default :func:`prism.adapt.adaptation_loss`). ``on_case(case_id)`` is called after each case.
    """
    cases = list(case_ids)
    report = evaluate_cases(model, reader, cases, device=device, amp_dtype=amp_dtype, options=options,
                            on_case=on_case)
    if adaptation is not None:
        report.adaptation = adapt_and_evaluate(model, reader, cases, adaptation, device=device,
                                               amp_dtype=amp_dtype, options=options, loss_fn=adapt_loss,
                                               baseline=report, rule=adapt_rule)
    return report


def adapt_and_evaluate(model: Backbone, reader: CacheReader, candidates: Sequence[str],
                       settings: AdaptationSettings, *, device: torch.device, amp_dtype: torch.dtype | None = None,
                       options: EvalOptions = DEFAULTS, loss_fn: AdaptLossFn | None = None,
                       baseline: EvalReport | None = None, rule: AdaptRule | None = None) -> AdaptationResult:
    """The site's query cases without adaptation and after ``settings.steps`` steps on its support cases.

    ``baseline``: a report that already holds the query cases unadapted (they are not predicted again).
    """
    support, query = site_cases(reader, candidates, settings)
    if baseline is not None and all(c in baseline.case_ids for c in query):
        before = baseline.subset(query)
    else:
        before = evaluate_cases(model, reader, query, device=device, amp_dtype=amp_dtype, options=options)
    adapted = (rule or fine_tune_rule)(model, load_support(reader, support), settings, device=device,
                                       amp_dtype=amp_dtype, loss_fn=loss_fn)
    after = evaluate_cases(adapted, reader, query, device=device, amp_dtype=amp_dtype, options=options)
    return AdaptationResult(site=settings.site, support_cases=support, query_cases=query, steps=settings.steps,
                            lr=settings.lr, before=before, after=after, settings=settings.settings())
