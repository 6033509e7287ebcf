"""The study report's pictures: Dice per combination, the loss components over training, adaptation curves.

The training-curve figure shows only components that mean the same thing in every arm: the fused segmentation
loss (``fuse``) and each other loss term in its own panel, never the total ``loss`` (a sum of different terms per
arm, and under Meta-Drop of fewer modalities, so a lower total says nothing about a better model). Each point is a
row of ``train_log.csv``, the mean over that row's log interval.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import write_atomic
from .logs import SHARE_PREFIX

#: train_log.csv columns that are not loss components
NOT_COMPONENTS = frozenset({"step", "lr", "loss", "samples_per_s", "peak_mem_gib", "epoch"})


def loss_components(logs: Sequence[Mapping[str, np.ndarray]]) -> list[str]:
    """The loss components logged by any of ``logs`` (train_log.csv columns), ``fuse`` first."""
    names: list[str] = []
    for log in logs:
        for key in log:
            if key not in NOT_COMPONENTS and not key.startswith(SHARE_PREFIX) and key not in names:
                names.append(key)
    return sorted(names, key=lambda k: (k != "fuse", names.index(k)))


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Any, path: Path) -> None:
    """Lay out and write ``fig`` as PNG atomically."""
    fig.tight_layout()
    write_atomic(path, lambda tmp: fig.savefig(tmp, format="png"), suffix=".png")


def plot_per_combination(summary: dict[str, Any], path: Path) -> None:
    """Bars: Dice per combination, one panel per region, one bar per arm (sd over seeds as error bars)."""
    regions, combos, arms = summary["regions"], summary["combinations"], list(summary["arms"])
    fig = _figure(max(8.0, 0.55 * len(combos) * max(1, len(arms)) / 1.5), 2.6 * len(regions))
    width = 0.8 / max(1, len(arms))
    x = np.arange(len(combos))
    for j, region in enumerate(regions):
        ax = fig.add_subplot(len(regions), 1, j + 1)
        for k, arm in enumerate(arms):
            a = summary["arms"][arm]
            mean = np.array([[np.nan if v is None else v for v in row] for row in a["per_combination_dice_mean"]]
                            or np.full((len(combos), len(regions)), np.nan))
            sd = np.array([[np.nan if v is None else v for v in row] for row in a["per_combination_dice_sd"]]
                          or np.full((len(combos), len(regions)), np.nan))
            ax.bar(x + (k - (len(arms) - 1) / 2) * width, mean[:, j], width, yerr=np.nan_to_num(sd[:, j]),
                   label=arm, capsize=1.5)
        ax.set_ylabel(f"{region} Dice (%)")
        ax.set_ylim(0, 100)
        ax.set_xticks(x, combos if j == len(regions) - 1 else [""] * len(combos), rotation=60, ha="right",
                      fontsize=7)
        if j == 0:
            ax.legend(fontsize=7, ncol=len(arms))
    save_figure(fig, path)


def plot_training_curves(arm_logs: Mapping[str, Sequence[Mapping[str, np.ndarray]]], path: Path) -> None:
    """One panel per loss component, one line per arm: the mean over the arm's usable seeds, band = +- sd.

    Args:
        arm_logs: arm -> the train_log.csv columns of each of its usable runs.
        path: the PNG to write.
    """
    components = loss_components([log for logs in arm_logs.values() for log in logs]) or ["loss"]
    cols = min(3, len(components))
    rows = -(-len(components) // cols)
    fig = _figure(3.6 * cols, 2.8 * rows)
    for i, name in enumerate(components):
        ax = fig.add_subplot(rows, cols, i + 1)
        for arm, logs in arm_logs.items():
            usable = [log for log in logs if name in log and "step" in log]
            if not usable:
                continue
            steps = sorted(set.intersection(*[set(log["step"].tolist()) for log in usable]))
            if not steps:
                continue
            values = np.array([[log[name][list(log["step"]).index(s)] for s in steps] for log in usable])
            mean = np.nanmean(values, axis=0)
            sd = np.nanstd(values, axis=0, ddof=1) if len(usable) > 1 else np.zeros(len(steps))
            ax.plot(steps, mean, label=f"{arm} (n={len(usable)})")
            ax.fill_between(steps, mean - sd, mean + sd, alpha=0.25)
        ax.set_title(name if name != "fuse" else "fuse (fused segmentation loss)", fontsize=9)
        ax.set_xlabel("step")
        if i % cols == 0:
            ax.set_ylabel("mean over the log interval")
        if i == 0 and ax.get_lines():
            ax.legend(fontsize=7)
    save_figure(fig, path)


def plot_adaptation(summary: dict[str, Any], path: Path) -> None:
    """Dice against adaptation steps K per region, one line per arm (band = +- sd over seeds)."""
    adapt, regions = summary["adaptation"], summary["regions"]
    fig = _figure(3.2 * len(regions), 3.2)
    for j, region in enumerate(regions):
        ax = fig.add_subplot(1, len(regions), j + 1)
        for arm, a in adapt.items():
            mean = np.array([np.nan if row[j] is None else row[j] for row in a["dice_mean"]])
            sd = np.nan_to_num(np.array([np.nan if row[j] is None else row[j] for row in a["dice_sd"]]))
            ax.plot(a["steps"], mean, marker="o", label=arm)
            ax.fill_between(a["steps"], mean - sd, mean + sd, alpha=0.2)
        ax.set_xlabel("adaptation steps K")
        ax.set_title(f"{region} Dice (%)", fontsize=9)
        if j == 0:
            ax.legend(fontsize=7)
    save_figure(fig, path)
