"""Adaptation curves: Dice on a held-out site after K adaptation steps, for several K, over R support draws.

For each draw r (seeded by ``seed + r``), N support cases are drawn without replacement from the site's cases and
the rest are the query cases (at most ``max_query``). For each K, the trained model is adapted from scratch with K
steps on the support cases (an :data:`~prism.evaluation.adaptation.AdaptRule`: the run's own ``Strategy.adapt``
or :func:`~prism.evaluation.adaptation.fine_tune_rule`) and scored on the query cases over every modality
combination, with the run's evaluation options (HD95 and lesion-wise metrics off); K = 0 scores the unadapted
model. Each draw gives,
per K, the 15-combination mean Dice per region; the curve is its mean and sd over the draws.

Written to ``adapt.json``, ``adapt.md`` and ``adapt.png`` in the run folder; ``eval.json`` is not touched.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..adapt import AdaptLossFn
from ..backbone import Backbone
from ..data.cache_reader import CacheReader
from ..errors import ConfigError, DataError
from ..runs import load_run
from .adaptation import (
    RULES,
    AdaptationSettings,
    AdaptRule,
    SupportCase,
    fine_tune_rule,
    load_support,
    strategy_rule,
)
from .options import DEFAULTS, EvalOptions
from .provenance import load_with_record
from .results import AVERAGING, combination_mean
from .scoring import evaluate_cases
from .writers import checkpoint_line, write_file_set

HELD_OUT_SPLIT = "heldout"
JSON_NAME, MARKDOWN_NAME, PLOT_NAME = "adapt.json", "adapt.md", "adapt.png"

#: the defaults of ``prism-eval adapt`` and a study's ``adapt`` section: K, support cases N, draws R, the rule
DEFAULT_STEPS, DEFAULT_SUPPORT, DEFAULT_DRAWS, DEFAULT_RULE = (0, 1, 5, 20), 1, 3, "strategy"


@dataclass
class AdaptationCurve:
    """Dice (fraction) after each K: per draw ``dice [draws, K, regions]``, with the draws' cases."""

    site: str
    steps: list[int]
    regions: list[str]
    dice: np.ndarray
    support: list[list[str]]
    query: list[list[str]]
    settings: dict[str, Any] = field(default_factory=dict)
    checkpoint: dict[str, Any] | None = None  # the checkpoint adapted (prism.evaluation.provenance)

    def mean(self) -> np.ndarray:
        return self.dice.mean(axis=0)

    def sd(self) -> np.ndarray:
        if self.dice.shape[0] < 2:
            return np.full(self.dice.shape[1:], np.nan)
        return self.dice.std(axis=0, ddof=1)

    def to_dict(self) -> dict[str, Any]:
        def rows(a: np.ndarray) -> list[list[float | None]]:
            return [[None if np.isnan(v) else round(float(v), 6) for v in row] for row in a]

        return {"checkpoint": self.checkpoint, "site": self.site, "steps": self.steps, "regions": self.regions,
                "draws": int(self.dice.shape[0]),
                "dice_mean": rows(self.mean()), "dice_sd": rows(self.sd()), "settings": self.settings,
                "per_draw": [{"support": s, "query": q, "dice": rows(d)}
                             for s, q, d in zip(self.support, self.query, self.dice, strict=True)]}


def site_pool(reader: CacheReader, site: str, *, split: str | None, fallback_split: str) -> list[str]:
    """The site's cases: from ``split``, else the cache's ``heldout`` split if it has one, else ``fallback_split``."""
    name = split or (HELD_OUT_SPLIT if HELD_OUT_SPLIT in reader.splits else fallback_split)
    members = [c for c in reader.split(name) if reader.info(c).site == site]
    if not members:
        sites = sorted({reader.info(c).site for c in reader.split(name)})
        raise DataError(f"{reader.path}: no case of site '{site}' in split '{name}' (sites there: {sites})")
    return members


def refuse_seen_site(reader: CacheReader, train_split: str, site: str) -> None:
    """DataError when ``site`` has cases in the training split (adapting to a site the model was trained on)."""
    seen = sorted({reader.info(c).site for c in reader.split(train_split)})
    if site in seen:
        raise DataError(f"site '{site}' is in the training split '{train_split}' (sites there: {seen}); hold it "
                        f"out (prism-data split CACHE --hold-out-site {site}) or pass --allow-seen-site")


def draw_support(members: Sequence[str], support: int, draws: int, seed: int, max_query: int | None = None
                 ) -> list[tuple[list[str], list[str]]]:
    """``draws`` (support, query) pairs: support drawn without replacement, query the rest (first ``max_query``)."""
    if len(members) <= support:
        raise DataError(f"--support {support}: the site has {len(members)} case(s); at least one must be left to "
                        "evaluate on")
    out = []
    for r in range(draws):
        order = np.random.default_rng(seed + r).permutation(len(members))
        chosen = sorted(members[i] for i in order[:support])
        rest = sorted(members[i] for i in order[support:])
        out.append((chosen, rest[:max_query] if max_query else rest))
    return out


def adaptation_curve(model: Backbone, reader: CacheReader, members: Sequence[str], *, site: str,
                     steps: Sequence[int], support: int, draws: int, base: AdaptationSettings,
                     device: torch.device, amp_dtype: torch.dtype | None = None,
                     options: EvalOptions = DEFAULTS, max_query: int | None = None,
                     rule: AdaptRule = fine_tune_rule, loss_fn: AdaptLossFn | None = None,
                     on_step: Callable[[int, int], None] | None = None) -> AdaptationCurve:
    """Dice against K over ``draws`` support draws from ``members`` (see the module docstring).

    Args:
        base: lr, optimizer, patch_size and seed of the adaptation (its steps are replaced by each K).
        options: how the query cases are scored.
        rule: the adaptation rule, called once per (draw, K > 0) as ``rule(model, support_cases, settings,
            device=..., amp_dtype=..., loss_fn=...)``.

    Returns:
        An :class:`AdaptationCurve` (``dice [draws, K, regions]``).
    """
    ks = sorted(set(int(k) for k in steps))
    if not ks or ks[0] < 0:
        raise ConfigError(f"--steps: counts >= 0 needed, got {list(steps)}")
    pairs = draw_support(list(members), support, draws, base.seed, max_query)
    results = []
    regions: list[str] = []
    for r, (chosen, query) in enumerate(pairs):
        cases: list[SupportCase] = load_support(reader, chosen)
        per_k = []
        for k in ks:
            if k == 0:
                adapted = model
            else:
                settings = dataclasses.replace(base, site=site, steps=k, seed=base.seed + r)
                adapted = rule(model, cases, settings, device=device, amp_dtype=amp_dtype, loss_fn=loss_fn)
            report = evaluate_cases(adapted, reader, query, device=device, amp_dtype=amp_dtype, options=options)
            regions = list(report.regions)
            per_k.append(combination_mean(report.dice))
            if on_step is not None:
                on_step(r, k)
        results.append(np.stack(per_k))
    settings = {**base.settings(), "steps": ks, "support_cases": support, "draws": draws, "max_query": max_query,
                "averaging": AVERAGING, "evaluation": options.settings()}
    return AdaptationCurve(site=site, steps=ks, regions=regions, dice=np.stack(results),
                           support=[p[0] for p in pairs], query=[p[1] for p in pairs], settings=settings)


def curve_markdown(curve: AdaptationCurve) -> str:
    mean, sd = curve.mean() * 100, curve.sd() * 100
    s = curve.settings

    def f(v: float) -> str:
        return "n/a" if np.isnan(v) else f"{v:.2f}"

    lines = [f"# Adaptation to site '{curve.site}'", "",
             f"{s.get('support_cases')} support case(s) per draw, {curve.dice.shape[0]} draw(s), rule "
             f"{s.get('rule', 'fine_tune')}, lr {s.get('lr') or 'the strategy default'}, patch "
             f"{s.get('patch_size') or 'whole volume'}; {checkpoint_line(curve.checkpoint)}; Dice (%) is the "
             "mean over the modality combinations of the mean over the draw's query cases; mean ± sd over draws.",
             "", "| K | " + " | ".join(curve.regions) + " |", "|---:|" + "---:|" * len(curve.regions)]
    for i, k in enumerate(curve.steps):
        lines.append(f"| {k} | " + " | ".join(f"{f(m)} ± {f(d)}" for m, d in zip(mean[i], sd[i], strict=True)) + " |")
    return "\n".join(lines) + "\n"


def plot_curve(curve: AdaptationCurve) -> Any:
    """The curve as a matplotlib Figure (Agg canvas): Dice against K per region, band = +- sd over draws."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 3.6), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    mean, sd = curve.mean() * 100, np.nan_to_num(curve.sd() * 100)
    for j, region in enumerate(curve.regions):
        ax.plot(curve.steps, mean[:, j], marker="o", label=region)
        ax.fill_between(curve.steps, mean[:, j] - sd[:, j], mean[:, j] + sd[:, j], alpha=0.2)
    ax.set_xlabel("adaptation steps K")
    ax.set_ylabel("Dice (%)")
    ax.set_title(f"site '{curve.site}', {curve.dice.shape[0]} draw(s)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def write_curve(curve: AdaptationCurve, out_dir: Path) -> list[Path]:
    """adapt.json, adapt.md and adapt.png in ``out_dir``, as one set (a failure leaves the old set whole)."""
    text, markdown, fig = json.dumps(curve.to_dict(), indent=2) + "\n", curve_markdown(curve), plot_curve(curve)
    return write_file_set(Path(out_dir), {
        JSON_NAME: lambda tmp: tmp.write_text(text, encoding="utf-8"),
        MARKDOWN_NAME: lambda tmp: tmp.write_text(markdown, encoding="utf-8"),
        PLOT_NAME: lambda tmp: fig.savefig(tmp, format="png"),
    })


def run_adaptation_curve(run_dir: str | Path, *, site: str, steps: Sequence[int] = DEFAULT_STEPS,
                         support: int = DEFAULT_SUPPORT, draws: int = DEFAULT_DRAWS, lr: float | None = None,
                         optimizer: str | None = None, patch_size: tuple[int, int, int] | None = None,
                         split: str | None = None, max_query: int | None = None, seed: int = 0,
                         allow_seen_site: bool = False, cache: str | Path | None = None, device: str | None = None,
                         rule: str = DEFAULT_RULE, on_step: Callable[[int, int], None] | None = None
                         ) -> AdaptationCurve:
    """Load a run's model, compute its adaptation curve to ``site`` and write adapt.* into the run folder.

    ``rule``: ``"strategy"`` (the run's own ``Strategy.adapt``, see
    :func:`~prism.evaluation.adaptation.strategy_rule`) or ``"fine_tune"``
    (:func:`~prism.evaluation.adaptation.fine_tune_rule`: SGD or Adam over every parameter, the same batches).
    ``lr`` None: the strategy's own step size (``strategy``), the run's ``eval.adapt_lr`` (``fine_tune``);
    ``optimizer`` None: the run's ``eval.adapt_optimizer`` (``fine_tune`` only). The query cases are scored with
    the run's evaluation options (``EvalOptions.from_config``), HD95 and lesion-wise metrics off.

    Raises:
        DataError: the site is in the run's training split (unless ``allow_seen_site``), has no cases, or too few.
    """
    if rule not in RULES:
        raise ConfigError(f"--rule: one of {', '.join(RULES)}, got {rule!r}")
    run, record = load_with_record(Path(run_dir) / "last.pt", lambda: load_run(run_dir, cache=cache, device=device))
    section = run.config.eval
    chosen = strategy_rule(run.strategy, use_strategy_lr=lr is None) if rule == "strategy" else fine_tune_rule
    reader = CacheReader(run.cache)
    try:
        if not allow_seen_site:
            refuse_seen_site(reader, run.config.data.train_split, site)
        members = site_pool(reader, site, split=split, fallback_split=section.split)
        base = AdaptationSettings(site=site, support_cases=support, steps=0,
                                  lr=section.adapt_lr if lr is None else lr,
                                  optimizer=section.adapt_optimizer if optimizer is None else optimizer,
                                  patch_size=tuple(patch_size) if patch_size else None, seed=seed)
        options = dataclasses.replace(EvalOptions.from_config(section, channels_last=run.config.train.channels_last),
                                      compute_hd95=False, lesion_metrics=False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=RuntimeWarning)
            curve = adaptation_curve(run.model, reader, members, site=site, steps=steps, support=support,
                                     draws=draws, base=base, device=run.device, amp_dtype=run.amp_dtype,
                                     options=options, max_query=max_query, rule=chosen, on_step=on_step)
        curve.settings.update(rule=rule if rule == "fine_tune" else f"strategy:{run.config.strategy.name}", lr=lr)
        curve.checkpoint = record
    finally:
        reader.close()
    write_curve(curve, Path(run_dir))
    return curve
