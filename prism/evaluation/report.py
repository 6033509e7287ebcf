"""Evaluate a model on every combination of every case of a split (and optionally fast adaptation), as a report.

``evaluate(...)`` returns an :class:`EvalReport`; ``write_report(report, run_dir)`` writes eval.json,
eval_cases.csv, eval.md and eval_dice.png as one set, and ``report_markdown(report)`` gives eval.md's text.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from ..backbone import Backbone
from ..data.cache_reader import CacheReader
from .adaptation import AdaptationSettings, AdaptLoss, AdaptRule, adapt_model, load_support, site_cases
from .options import DEFAULTS, EvalOptions
from .provenance import checkpoint_record, report_matches_checkpoint
from .results import AdaptationResult, EvalReport, combination_mean
from .scoring import evaluate_cases
from .writers import report_markdown, write_report

__all__ = ["AdaptationResult", "AdaptationSettings", "EvalOptions", "EvalReport", "checkpoint_record",
           "combination_mean", "evaluate", "report_markdown", "report_matches_checkpoint", "write_report"]


def evaluate(model: Backbone, reader: CacheReader, case_ids: Sequence[str], *, device: torch.device,
             amp_dtype: torch.dtype | None = None, et_postprocess_voxels: int = DEFAULTS.et_postprocess_voxels,
             combos_per_pass: int = DEFAULTS.combos_per_pass, channels_last: bool = False,
             window: Sequence[int] | None = DEFAULTS.window, overlap: float = DEFAULTS.overlap,
             sw_batch_size: int = DEFAULTS.sw_batch_size, sigma_scale: float = DEFAULTS.sigma_scale,
             hd95: bool = DEFAULTS.compute_hd95, hd95_convention: str = DEFAULTS.hd95_convention,
             hd95_empty: float | None = DEFAULTS.hd95_empty,
             stitch_on_cpu: bool = DEFAULTS.stitch_on_cpu, lesion_metrics: bool = DEFAULTS.lesion_metrics,
             tta: str = DEFAULTS.tta,
             adaptation: AdaptationSettings | None = None, adapt_loss: AdaptLoss | None = None,
             adapt_rule: AdaptRule | None = None, on_case: Callable[[str], None] | None = None) -> EvalReport:
    """Dice and HD95 per case, combination and region for ``case_ids``, every combination of a case batched.

    ``window=None`` predicts whole volumes; a window size switches to Gaussian-blended sliding windows with
    ``overlap``; ``tta='mirror'`` averages the probabilities of the 8 mirrorings (:mod:`prism.evaluation.tta`).
    ``hd95_convention``: ``"monai"`` or ``"brats2023"`` (:mod:`prism.evaluation.hausdorff`);
    ``hd95_empty``: the HD95 of a pair with exactly one empty set (None: the convention's, NaN: left out).
    ``adaptation`` adds a fast-adaptation comparison on a held-out site to the same report, adapted
    by ``adapt_rule`` (default: fine-tuning; :func:`~prism.evaluation.adaptation.evaluation_rule` gives a run's
    strategy's own rule) on ``adapt_loss`` (default cross-entropy + soft Dice).
    """
    options = EvalOptions(
        window=tuple(int(w) for w in window) if window else None,  # type: ignore[arg-type]
        overlap=float(overlap), sw_batch_size=int(sw_batch_size), sigma_scale=float(sigma_scale),
        combos_per_pass=int(combos_per_pass), et_postprocess_voxels=int(et_postprocess_voxels),
        compute_hd95=bool(hd95), hd95_convention=str(hd95_convention),
        hd95_empty=None if hd95_empty is None else float(hd95_empty), channels_last=bool(channels_last),
        stitch_on_cpu=bool(stitch_on_cpu), lesion_metrics=bool(lesion_metrics), tta=str(tta),
    )
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
                       options: EvalOptions = EvalOptions(), loss_fn: AdaptLoss | None = None,
                       baseline: EvalReport | None = None, rule: AdaptRule | None = None) -> AdaptationResult:
    """The site's query cases without adaptation and after ``settings.steps`` steps on its support cases.

    ``baseline``: a report that already holds the query cases unadapted (they are not predicted again).
    """
    support, query = site_cases(reader, candidates, settings)
    if baseline is not None and all(c in baseline.case_ids for c in query):
        before = baseline.subset(query)
    else:
        before = evaluate_cases(model, reader, query, device=device, amp_dtype=amp_dtype, options=options)
    adapted = (rule or adapt_model)(model, load_support(reader, support), settings, device=device,
                                    amp_dtype=amp_dtype, loss_fn=loss_fn)
    after = evaluate_cases(adapted, reader, query, device=device, amp_dtype=amp_dtype, options=options)
    return AdaptationResult(site=settings.site, support_cases=support, query_cases=query, steps=settings.steps,
                            lr=settings.lr, before=before, after=after, settings=settings.settings())


def evaluate_kwargs(eval_config: object) -> dict[str, object]:
    """Keyword arguments of :func:`evaluate` from a config's ``eval`` section (fields it lacks keep defaults).

    Fields read: et_postprocess_voxels, window, overlap, sw_batch_size, combos_per_pass, hd95, hd95_convention,
    hd95_empty ("convention" = the convention's value, None = leave one-empty pairs out), stitch_on_cpu,
    lesion_metrics, tta, and adapt_site, adapt_cases, adapt_steps, adapt_lr,
    adapt_optimizer, adapt_patch_size, adapt_split, adapt_seed for fast adaptation (off while adapt_site is None).
    """
    def get(name: str, default: object) -> object:
        value = getattr(eval_config, name, default)
        return default if value is None and default is not None else value

    d = DEFAULTS
    hd95_empty = getattr(eval_config, "hd95_empty", "convention")
    kwargs: dict[str, object] = {
        "et_postprocess_voxels": get("et_postprocess_voxels", d.et_postprocess_voxels),
        "window": get("window", d.window),
        "overlap": get("overlap", d.overlap),
        "sw_batch_size": get("sw_batch_size", d.sw_batch_size),
        "combos_per_pass": get("combos_per_pass", d.combos_per_pass),
        "hd95": get("hd95", d.compute_hd95),
        "hd95_convention": get("hd95_convention", d.hd95_convention),
        "hd95_empty": (d.hd95_empty if hd95_empty == "convention" else
                       float("nan") if hd95_empty is None else float(hd95_empty)),
        "stitch_on_cpu": get("stitch_on_cpu", d.stitch_on_cpu),
        "lesion_metrics": get("lesion_metrics", d.lesion_metrics),
        "tta": get("tta", d.tta),
    }
    site = getattr(eval_config, "adapt_site", None)
    if site:
        patch = getattr(eval_config, "adapt_patch_size", None)
        kwargs["adaptation"] = AdaptationSettings(
            site=str(site), support_cases=int(get("adapt_cases", 1)), steps=int(get("adapt_steps", 10)),
            lr=float(get("adapt_lr", 0.01)), optimizer=str(get("adapt_optimizer", "sgd")),
            patch_size=tuple(int(p) for p in patch) if patch else None,  # type: ignore[arg-type]
            split=getattr(eval_config, "adapt_split", None), seed=int(get("adapt_seed", 0)),
        )
    return kwargs
