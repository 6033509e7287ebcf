"""What the loop logs and checks, without making the host wait for the device on every step.

Each step's loss parts (and the norm of the step's gradients) are added to running sums kept on the device; the
host reads the sums once per log interval, in one transfer, and each row of ``train_log.csv`` is the mean over its
interval. The same read tells whether the interval was healthy: a sum that holds a NaN or an infinity stays
non-finite, so a non-finite loss part or gradient anywhere in the interval shows in the read, and a per-slot
count of the steps at which the running sum was still finite names the first bad step exactly. A check that read
the loss every step would cost one host sync per step (a stalled GPU pipeline); this one costs four small kernels
per step and no sync.

With ``train.nonfinite: stop`` (the default) the run stops at the read that sees a non-finite value, naming the
step and the parts; checkpoints are written only after a read that found the state healthy, so ``last.pt`` always
holds the last good state. With ``skip``, a step whose gradient (or loss) is non-finite makes no update, as
``torch.amp.GradScaler`` does (``TrainContext.optimizer_step``), and is left out of the means; the row counts it
in ``skipped``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import PrismError
from .distributed import DistInfo, all_reduce_mean_

GRADIENT = "gradient"  # the slot of the gradient norm (checked, not logged)


class NonFiniteError(PrismError):
    """The run met a non-finite loss part or gradient (``train.nonfinite: stop``); exit status 3."""

    exit_code = 3


@dataclass
class StepHealth:
    """What the context saw of the gradients during one step (:meth:`TrainContext.end_step`).

    Attributes:
        grad_norm: the norm of the step's gradients on the device (the sum of the norms when the step read its
            gradients more than once), or None when the step read none through the context.
        found_inf: a device bool, True where the step was skipped on the device (``nonfinite: skip``), or None.
        skipped_on_host: the step was skipped after a host-side check (optimizers without a fused kernel).
    """

    grad_norm: torch.Tensor | None = None
    found_inf: torch.Tensor | None = None
    skipped_on_host: bool = False


@dataclass
class IntervalRead:
    """One read of the meter: interval means and what was non-finite (host values)."""

    step: int
    steps: int  # steps in the interval
    means: dict[str, float]
    skipped: int
    first_bad: dict[str, int] = field(default_factory=dict)  # slot -> first step at which it was non-finite
    unchanged: int | None = None  # a step that changed no parameter (the first of a fit is checked)


class StepMeter:
    """Interval sums of the loss parts on the device; :meth:`read` returns their means (one transfer).

    Args:
        nonfinite: ``"stop"`` or ``"skip"`` (``train.nonfinite``).
        dist: the processes of the run (sums are averaged over them when read).
    """

    def __init__(self, nonfinite: str = "stop", dist: DistInfo | None = None) -> None:
        self.nonfinite = nonfinite
        self.dist = dist or DistInfo()
        self.names: list[str] = []
        self.start = 0  # the interval holds the steps after this one
        self._reset()
        self._snapshot: list[torch.Tensor] | None = None
        self._params: list[torch.Tensor] = []
        self._checked_step = 0
        self._changed: torch.Tensor | None = None
        self._last: IntervalRead | None = None
        self._zero: torch.Tensor | None = None

    def _reset(self) -> None:
        self.steps = 0
        self.counts: list[int] = [0] * len(self.names)  # steps each part was present in
        self.host_skipped = 0
        self._sums: torch.Tensor | None = None
        self._finite: torch.Tensor | None = None
        self._skipped: torch.Tensor | None = None

    # ---- adding ----------------------------------------------------------------------------------------------
    def expect_update(self, params: list[torch.Tensor], step: int) -> None:
        """Check that the next step (``step``) changes ``params`` (reported by the next read; costs one copy of
        them)."""
        self._params, self._checked_step = params, step
        self._snapshot = [p.detach().clone() for p in params] if params else None

    def _values(self, parts: Mapping[str, torch.Tensor], health: StepHealth) -> torch.Tensor:
        new = [n for n in parts if n not in self.names]
        if new:  # a part first seen now: its slot is appended (zero so far)
            self.names.extend(new)
            self.counts.extend([0] * len(new))
            if self._sums is not None:
                pad = torch.zeros(len(new), device=self._sums.device)
                self._sums = torch.cat([self._sums[:-1], pad, self._sums[-1:]])
                self._finite = torch.cat([self._finite[:-1], pad.int() + self.steps, self._finite[-1:]])
        for i, n in enumerate(self.names):
            self.counts[i] += n in parts
        device = next((v.device for v in parts.values() if isinstance(v, torch.Tensor)), torch.device("cpu"))
        if self._zero is None or self._zero.device != device:
            self._zero = torch.zeros((), device=device)  # made once: stands for a missing part or gradient
        values = [_scalar(parts[n], device) if n in parts else self._zero for n in self.names]
        grad = health.grad_norm if health.grad_norm is not None else self._zero
        return torch.stack([*values, grad]).float()

    def add(self, parts: Mapping[str, torch.Tensor], health: StepHealth) -> None:
        """Add one step's detached loss parts (device scalars) and its gradient health (no host sync)."""
        self._last = None
        if health.skipped_on_host:
            self.host_skipped += 1
            self.steps += 1
            return
        values = self._values(parts, health)
        if self.nonfinite == "skip":
            bad = ~torch.isfinite(values).all()
            if health.found_inf is not None:
                bad = bad | health.found_inf
            values = torch.where(bad, 0.0, values)
            self._skipped = bad.int() if self._skipped is None else self._skipped + bad
        self._sums = values if self._sums is None else self._sums + values
        finite = torch.isfinite(self._sums)
        self._finite = finite.int() if self._finite is None else self._finite + finite
        self.steps += 1
        if self._snapshot is not None:
            self._check_change(health)

    def _check_change(self, health: StepHealth) -> None:
        diff = torch._foreach_sub(self._params, self._snapshot)
        changed = torch.stack(torch._foreach_norm(diff)).sum() > 0
        if health.found_inf is not None:  # a skipped step changes nothing, rightly
            changed = changed | health.found_inf
        self._changed = changed | ~torch.isfinite(self._sums).all()
        self._snapshot, self._params = None, []

    # ---- reading ---------------------------------------------------------------------------------------------
    def read(self, step: int, *, reset: bool) -> IntervalRead:
        """The interval's means and health, read in one transfer (cached for ``step``).

        Args:
            step: the step just completed.
            reset: start a new interval after this read (a log row); False for a check (before a checkpoint).
        """
        if self._last is not None and self._last.step == step:
            result = self._last
        else:
            result = self._transfer(step)
        if reset:
            self.start = step
            self._reset()
            self._last = None
        else:
            self._last = result
        return result

    def _transfer(self, step: int) -> IntervalRead:
        n = len(self.names) + 1
        if self._sums is None:
            return IntervalRead(step, self.steps, {}, self.host_skipped)
        sums = self._sums
        if self.dist.enabled:
            sums = sums.clone()
            all_reduce_mean_([sums], self.dist)
        pieces = [sums, self._finite.float()]
        extra = [t for t in (self._skipped, self._changed) if t is not None]
        flat = torch.cat([*pieces, *(t.float().reshape(1) for t in extra)]).tolist()  # the one transfer
        tail = flat[2 * n:]
        skipped = self.host_skipped + (int(tail.pop(0)) if self._skipped is not None else 0)
        unchanged = self._checked_step if self._changed is not None and not tail.pop(0) else None
        self._changed = None  # reported once
        kept = max(self.steps - skipped, 1)
        means = {name: flat[i] / max(min(self.counts[i], kept), 1) for i, name in enumerate(self.names)}
        first_bad = {name: min(self.start + int(flat[n + i]) + 1, step)
                     for i, name in enumerate([*self.names, GRADIENT]) if not math.isfinite(flat[i])}
        return IntervalRead(step, self.steps, means, skipped, first_bad, unchanged)

    # ---- checkpointing ---------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The open interval (its sums stay tensors), so a resumed run logs the same means."""
        return {"names": list(self.names), "start": self.start, "steps": self.steps, "counts": list(self.counts),
                "host_skipped": self.host_skipped, "sums": self._sums, "finite": self._finite,
                "skipped": self._skipped}

    def load_state_dict(self, state: dict[str, Any], device: torch.device) -> None:
        def moved(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device)

        self.names = [str(n) for n in state["names"]]
        self.start, self.steps = int(state["start"]), int(state["steps"])
        self.counts = [int(c) for c in state["counts"]]
        self.host_skipped = int(state["host_skipped"])
        self._sums, self._finite, self._skipped = moved(state["sums"]), moved(state["finite"]), \
            moved(state["skipped"])
        self._last = None


def _scalar(value: Any, device: torch.device) -> torch.Tensor:
    """A logged part as a 0-dim tensor (a float from a third-party strategy becomes one, on ``device``)."""
    if isinstance(value, torch.Tensor):
        return value.detach().reshape(())
    return torch.tensor(float(value), device=device)
