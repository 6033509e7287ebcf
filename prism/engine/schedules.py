"""Learning-rate schedules (``optim.schedule``, ``optim.warmup_steps``), built from ``torch.optim.lr_scheduler``.

With ``T = train.steps - W`` the steps after a warm-up of ``W`` steps and ``t`` the steps taken since it ended, the
learning rate of the step after ``s`` steps is:

- warm-up (``s < W``, ``LinearLR``): ``lr * (a + (1 - a) * s / W)``, ``a = optim.warmup_start``;
- ``poly`` (``PolynomialLR``, nnU-Net's): ``lr * (1 - t / T) ** poly_power``;
- ``cosine`` (``CosineAnnealingLR``, SGDR's half cosine, Loshchilov & Hutter 2017, eq. 5 without restarts):
  ``min_lr + (lr - min_lr) * (1 + cos(pi * t / T)) / 2``;
- ``constant`` (``ConstantLR`` with factor 1): ``lr``.

A warm-up and the schedule after it are joined by ``SequentialLR``. Without a warm-up, ``poly`` is the plain
``PolynomialLR(total_iters=train.steps)`` that prism has always used (the same rates, bit for bit).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch.optim.lr_scheduler import (
    ConstantLR,
    CosineAnnealingLR,
    LinearLR,
    LRScheduler,
    PolynomialLR,
    SequentialLR,
)

from ..config import OptimConfig

logger = logging.getLogger(__name__)


def build_schedule(optimizer: torch.optim.Optimizer, optim: OptimConfig, steps: int) -> LRScheduler:
    """The learning-rate schedule of ``optim`` over ``steps`` optimisation steps (step it after each one).

    Args:
        optimizer: the optimizer whose parameter groups' ``lr`` it sets (each group's own peak rate).
        optim: ``optim.schedule``, ``poly_power``, ``min_lr``, ``warmup_steps``, ``warmup_start``.
        steps: ``train.steps``.

    Returns:
        The scheduler: the schedule itself, or a ``SequentialLR`` of the warm-up and the schedule.
    """
    warmup = optim.warmup_steps
    main = _main_schedule(optimizer, optim, max(steps - warmup, 1))
    if not warmup:
        return main
    ramp = LinearLR(optimizer, start_factor=optim.warmup_start, end_factor=1.0, total_iters=warmup)
    return SequentialLR(optimizer, [ramp, main], milestones=[warmup])


def _main_schedule(optimizer: torch.optim.Optimizer, optim: OptimConfig, horizon: int) -> LRScheduler:
    if optim.schedule == "cosine":
        return CosineAnnealingLR(optimizer, T_max=horizon, eta_min=optim.min_lr)
    if optim.schedule == "constant":
        return ConstantLR(optimizer, factor=1.0, total_iters=0)
    return PolynomialLR(optimizer, total_iters=horizon, power=optim.poly_power)


def _horizon_attribute(scheduler: LRScheduler) -> str | None:
    """The attribute that holds a schedule's length (None: it has none, e.g. a constant rate)."""
    if isinstance(scheduler, PolynomialLR):
        return "total_iters"
    if isinstance(scheduler, CosineAnnealingLR):
        return "T_max"
    return None


def stretch_schedule(scheduler: LRScheduler, steps: int) -> None:
    """Make a loaded schedule end at ``steps`` when a resume changed ``train.steps``.

    A checkpoint's schedule ends where the run was first planned to end, and these schedulers compute each rate
    from the previous one, so a run resumed with more steps would otherwise go on from where the old end left it
    (0 for ``poly``). The schedule after the warm-up gets the new length, and when it is under way its rate
    restarts from the closed form at its position (``PolynomialLR``'s or ``CosineAnnealingLR``'s); a warm-up is
    unchanged, and ``constant`` has no length. An unchanged ``train.steps`` leaves everything as loaded (the
    resume stays bitwise exact).

    Args:
        scheduler: the run's scheduler with the checkpoint's state loaded (:func:`build_schedule`'s kind).
        steps: the new ``train.steps``.
    """
    warmup = scheduler._milestones[0] if isinstance(scheduler, SequentialLR) else 0
    main = scheduler._schedulers[-1] if isinstance(scheduler, SequentialLR) else scheduler
    attribute = _horizon_attribute(main)
    if attribute is None:
        return
    horizon = max(steps - warmup, 1)
    old = getattr(main, attribute)
    if old == horizon:
        return
    setattr(main, attribute, horizon)
    if scheduler.last_epoch >= warmup:  # the schedule is under way: its rate from the closed form, new length
        _set_rates(scheduler, main._get_closed_form_lr())
    logger.info("train.steps changed from %d to %d: the learning-rate schedule now ends at step %d", old + warmup,
                steps, steps)


def _set_rates(scheduler: LRScheduler, rates: list[Any]) -> None:
    groups = scheduler.optimizer.param_groups
    for group, lr in zip(groups, rates, strict=True):
        if isinstance(group["lr"], torch.Tensor):  # a capturable optimizer's LR tensor (CUDA graphs read it)
            group["lr"].fill_(float(lr))
        else:
            group["lr"] = float(lr)
    last = [float(g["lr"]) for g in groups]
    scheduler._last_lr = last
    if isinstance(scheduler, SequentialLR):
        scheduler._schedulers[-1]._last_lr = list(last)
