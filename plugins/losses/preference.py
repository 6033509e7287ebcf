"""Preference-aware regularisation (PASSION): relative preference, the proto gate and per-modality coefficients."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import torch

from .errors import LossOptionError
from .segmentation import upcast

Projection = Literal["passion", "clamp"]
Initial = Literal["inverse_rate", "ones"]
Schedule = Literal["seeds", "passion"]
Statistic = Literal["relative_preference", "pooled_distance"]


def relative_preference(gap: torch.Tensor, mask: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """RP_n^m = 1 - D_n^m / mean_{available m'} D_n^m'; 0 for missing modalities. No gradient flows through RP.

    Args:
        gap: prototype gaps D ``[B, M]``; mask: ``[B, M]`` bool; eps: added to the mean.
    Returns:
        ``[B, M]`` float32.
    Raises:
        ValueError: shapes that do not match.
    """
    if gap.dim() != 2 or gap.shape != mask.shape:
        raise ValueError(f"gap and mask must both be [B, M], got {tuple(gap.shape)} and {tuple(mask.shape)}")
    gap = upcast(gap.detach())
    m = mask.to(gap.dtype)
    mean = (gap * m).sum(1, keepdim=True) / m.sum(1, keepdim=True).clamp_min(1.0)
    return (1.0 - gap / (mean + eps)) * m


def preference_gate(rp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """omega = 1[RP < 0] (and modality available).

    Args:
        rp: ``[B, M]`` relative preference; mask: ``[B, M]`` bool.
    Returns:
        ``[B, M]`` float (0 or 1).
    """
    return ((rp < 0) & mask).float()


def batch_preference_gate(distance: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """PASSION's gate, one per modality for the batch: ``omega_m = 1[sum_b mask (D_b^m / mean_m' D_b^m' - 1) > 0]``.

    A sample whose distances are all 0 (one available modality: its single-modality path is the fused path)
    adds 0. PASSION's code divides 0 by 0 there, and the NaN leaves every gate of the step off; at its batch size
    of 1 that is the same outcome, since a score of 0 is not above 0.

    Args:
        distance: ``[B, M]`` prototype distances (PASSION: mean absolute gap ``|S_s - S_t|``); mask: ``[B, M]`` bool.
    Returns:
        ``[B, M]`` float (0 or 1): the modality's gate, repeated over its available samples.
    Raises:
        ValueError: shapes that do not match.
    """
    if distance.dim() != 2 or distance.shape != mask.shape:
        raise ValueError(f"distance and mask must both be [B, M], got {tuple(distance.shape)} and "
                         f"{tuple(mask.shape)}")
    d = upcast(distance.detach())
    m = mask.to(d.dtype)
    mean = (d * m).sum(1, keepdim=True) / m.sum(1, keepdim=True).clamp_min(1.0)
    ratio = torch.where(mean > 0, d / mean.clamp_min(1e-30), torch.ones_like(d))  # 0 / 0: no preference
    score = (m * (ratio - 1.0)).sum(0, keepdim=True)  # [1, M]
    return (score > 0).to(d.dtype) * m


def initial_coefficients(missing_rates: Sequence[float]) -> torch.Tensor:
    """E^m = 1 / (1 - FR^m).

    Args:
        missing_rates: FR^m in ``[0, 1)``, one per modality.
    Returns:
        ``[M]`` float32.
    Raises:
        LossOptionError: a rate outside ``[0, 1)``.
    """
    rates = torch.as_tensor([float(r) for r in missing_rates], dtype=torch.float32)
    if bool(((rates < 0) | (rates >= 1)).any()):
        raise LossOptionError(f"missing rates must lie in [0, 1), got {list(missing_rates)}")
    return 1.0 / (1.0 - rates)


def project_coefficients(coef: torch.Tensor, *, low: float = 0.1, high: float = 4.0,
                         projection: Projection = "passion", target_norm: float | None = None) -> torch.Tensor:
    """Proj(E): clamp to ``[low, high]``; ``"passion"`` then rescales to ``target_norm * E / ||E||_2``.

    ``target_norm`` defaults to sqrt(M) (= PASSION's 2 for four modalities), so all-ones stays all-ones.

    Args:
        coef: ``[M]`` coefficients; low, high: the clamp; projection: ``"passion"`` or ``"clamp"``.
    Returns:
        ``[M]``.
    Raises:
        LossOptionError: an unknown projection.
    """
    coef = coef.clamp(low, high)
    if projection == "clamp":
        return coef
    if projection == "passion":
        norm = math.sqrt(coef.numel()) if target_norm is None else target_norm
        return norm * coef / coef.norm(p=2)
    raise LossOptionError(f"projection must be 'passion' or 'clamp', got {projection!r}")


class PreferenceRegulariser:
    """State of the preference-aware regularisation: coefficients E [M] and the epoch's RP statistics.

    Call ``observe(rp, mask)`` every step (no host sync) and ``on_epoch_end()`` once per epoch:
    ``E <- Proj(E - gamma * mean RP^m)``, gamma multiplied by ``gamma_growth`` every ``growth_every`` epochs.
    E starts at ``Proj(1 / (1 - FR^m))``: the initial value is projected like every later one, so the first update
    moves E by ``gamma * RP`` instead of rescaling it (unprojected, 1/(1-FR) at the mr2468 rates has norm 5.97
    where every later E has norm 2, a drop of about 3x at the first epoch end).

    PASSION's code, each an option (the defaults are the seeds'):

    * ``initial="ones"``: E starts at 1 (its ``imb_beta``; the 1/(1-FR) factor is a separate, fixed
      ``modal_weight`` there) instead of ``Proj(1 / (1 - FR^m))``.
    * ``schedule="passion"``: the growth runs before the update (``if epoch % 100 == 0: eta *= 1.5``), so
      updates 0..99 use ``gamma * 1.5``, 100..199 ``gamma * 1.5^2`` ...; the seeds' schedule uses ``gamma`` first.
    * ``statistic="pooled_distance"``: the epoch statistic is ``1 - mean_epoch D^m / mean_m'(mean_epoch D^m')``
      from the distances pooled over the epoch (``observe(..., distance=D)``), not the mean of per-sample RP.
    """

    def __init__(self, num_modalities: int, *, missing_rates: Sequence[float] | None = None, gamma: float = 0.01,
                 gamma_growth: float = 1.5, growth_every: int = 100, clamp: tuple[float, float] = (0.1, 4.0),
                 projection: Projection = "passion", target_norm: float | None = None,
                 initial: Initial = "inverse_rate", schedule: Schedule = "seeds",
                 statistic: Statistic = "relative_preference") -> None:
        rates = [0.0] * num_modalities if missing_rates is None else list(missing_rates)
        if len(rates) != num_modalities:
            raise LossOptionError(f"missing_rates has {len(rates)} entries for {num_modalities} modalities")
        if projection not in ("passion", "clamp"):
            raise LossOptionError(f"projection must be 'passion' or 'clamp', got {projection!r}")
        if initial not in ("inverse_rate", "ones") or schedule not in ("seeds", "passion") or \
                statistic not in ("relative_preference", "pooled_distance"):
            raise LossOptionError(f"initial must be 'inverse_rate' or 'ones', schedule 'seeds' or 'passion', "
                                  f"statistic 'relative_preference' or 'pooled_distance'; got {initial!r}, "
                                  f"{schedule!r}, {statistic!r}")
        self.initial, self.schedule, self.statistic = initial, schedule, statistic
        self.num_modalities = num_modalities
        self.gamma0, self.gamma_growth, self.growth_every = float(gamma), float(gamma_growth), int(growth_every)
        self.clamp = (float(clamp[0]), float(clamp[1]))
        self.projection: Projection = projection
        self.target_norm = target_norm
        start = initial_coefficients(rates)
        if initial == "ones":
            start = torch.ones_like(start)
        self.coefficients = project_coefficients(start, low=self.clamp[0], high=self.clamp[1],
                                                 projection=projection, target_norm=target_norm)
        self.gamma = self._gamma_at(0)
        self.epoch = 0
        self._rp_sum = torch.zeros(num_modalities)
        self._rp_count = torch.zeros(num_modalities)

    def to(self, device: torch.device | str) -> PreferenceRegulariser:
        """Move the coefficients and the epoch statistics to ``device`` (once, before a run's first step)."""
        self.coefficients = self.coefficients.to(device)
        self._rp_sum, self._rp_count = self._rp_sum.to(device), self._rp_count.to(device)
        return self

    def coefficients_on(self, device: torch.device) -> torch.Tensor:
        """E ``[M]`` on ``device``. After ``to(device)`` these are the coefficients themselves; otherwise they are
        moved there on this call (a compiled step would then trace twice: call ``to`` first)."""
        if self.coefficients.device != device:
            self.to(device)
        return self.coefficients

    def _gamma_at(self, epoch: int) -> float:
        """The step size of the update made at the end of ``epoch`` (0-based)."""
        grown = epoch // self.growth_every + (1 if self.schedule == "passion" else 0)
        return self.gamma0 * self.gamma_growth ** grown

    @torch.no_grad()
    def observe(self, rp: torch.Tensor, mask: torch.Tensor, distance: torch.Tensor | None = None,
                weight: torch.Tensor | float = 1.0) -> None:
        """Accumulate the epoch statistic over the available (sample, modality) pairs: RP ``[B, M]``, or with
        ``statistic="pooled_distance"`` the distances ``distance`` ``[B, M]``; ``weight`` (0 or 1, a tensor such
        as ``prism.loss.observation_weight()``) multiplies what is recorded."""
        m = mask.to(torch.float32)
        if not isinstance(weight, float) or weight != 1.0:
            m = m * weight
        if self.statistic == "pooled_distance":
            if distance is None:
                raise ValueError("statistic='pooled_distance' needs the distances: observe(rp, mask, distance=...)")
            rp = distance.detach()
        if self._rp_sum.device != rp.device:
            self.to(rp.device)
        self._rp_sum = self._rp_sum + (rp.float() * m).sum(0)
        self._rp_count = self._rp_count + m.sum(0)

    @torch.no_grad()
    def on_epoch_end(self) -> None:
        """Update E from the epoch's mean RP (a modality never seen keeps its value), reset the statistics.

        Under torch.distributed the RP sums and counts of every rank are added first, so that every rank (and
        rank 0's checkpoint) holds the same coefficients.
        """
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            stats = torch.stack([self._rp_sum, self._rp_count])
            torch.distributed.all_reduce(stats)
            self._rp_sum, self._rp_count = stats[0], stats[1]
        device = self._rp_sum.device
        mean_rp = self._rp_sum / self._rp_count.clamp_min(1.0)
        if self.statistic == "pooled_distance":  # mean_rp holds the pooled mean distance per modality
            seen = (self._rp_count > 0).to(mean_rp.dtype)
            overall = (mean_rp * seen).sum() / seen.sum().clamp_min(1.0)
            mean_rp = (1.0 - mean_rp / overall.clamp_min(1e-12)) * seen
        coef = self.coefficients.to(device) - self.gamma * mean_rp
        self.coefficients = project_coefficients(coef, low=self.clamp[0], high=self.clamp[1],
                                                 projection=self.projection, target_norm=self.target_norm)
        self._rp_sum = torch.zeros_like(self._rp_sum)
        self._rp_count = torch.zeros_like(self._rp_count)
        self.epoch += 1
        self.gamma = self._gamma_at(self.epoch)

    def state_dict(self) -> dict[str, Any]:
        """Plain floats and lists (loads with ``torch.load(weights_only=True)``)."""
        return {
            "coefficients": [float(x) for x in self.coefficients.tolist()],
            "rp_sum": [float(x) for x in self._rp_sum.tolist()],
            "rp_count": [float(x) for x in self._rp_count.tolist()],
            "epoch": int(self.epoch),
            "gamma": float(self.gamma),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key in ("coefficients", "rp_sum", "rp_count"):
            if len(state[key]) != self.num_modalities:
                raise ValueError(f"preference state '{key}' has {len(state[key])} entries for "
                                 f"{self.num_modalities} modalities")
        device = self.coefficients.device
        self.coefficients = torch.as_tensor(state["coefficients"], dtype=torch.float32, device=device)
        self._rp_sum = torch.as_tensor(state["rp_sum"], dtype=torch.float32, device=device)
        self._rp_count = torch.as_tensor(state["rp_count"], dtype=torch.float32, device=device)
        self.epoch = int(state["epoch"])
        self.gamma = float(state["gamma"])
