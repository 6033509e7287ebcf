"""A weighted sum of registered loss terms, with every named part kept for logging.

The first evaluation in a process also checks the seams (``prism.seams``): the backbone's SegOutput against the
parts the terms need and the SegOutput shapes, and each term's value (a finite scalar on the output's device),
so that a plugin breaking its contract is named before the first step ends. Later evaluations check nothing
(no host sync); under ``train.compile: step`` they are not run (the traced call skips them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..batch import Batch
from ..loss import LossResult, LossTerm, clear_step_cache
from ..outputs import SegOutput
from ..registry import PluginEntry
from ..seams import bug, check_loss_result, check_seg_output, owner_of


@dataclass
class WeightedTerm:
    name: str
    weight: float
    term: LossTerm
    #: the registry entry that built the term (named when it breaks its contract)
    entry: PluginEntry | None = None


class LossSet:
    """``total = sum_i weight_i * term_i``; parts are named ``<part>`` (the term's own names).

    Besides the terms' parts, each call returns ``loss`` (the total) and ``share.<piece>``: each piece's weighted
    contribution divided by the total (detached device tensors, no host read), where the pieces are a term's
    ``LossResult.contributions`` (the ``prism`` term: ``fuse``, ``prm``, ``pixel_kl`` ...) or the term itself.
    A term that owns tensors (fixed weights, preference coefficients) moves them in ``to(device)``, which the
    trainer calls once before the first step, so that no step creates or moves state.

    Args:
        terms: the weighted terms.
        backbone: the registry entry of the backbone whose outputs the terms read (named when its output breaks
            the SegOutput contract; None: the first evaluation does not check the output).
        num_classes, num_modalities: K and M the output must have (None: not checked).
    """

    def __init__(self, terms: list[WeightedTerm], *, backbone: PluginEntry | None = None,
                 num_classes: int | None = None, num_modalities: int | None = None) -> None:
        if not terms:
            raise ValueError("LossSet needs at least one term")
        self.terms = terms
        self.backbone = backbone
        self.num_classes = num_classes
        self.num_modalities = num_modalities
        self.checked = False  # the seams are checked at the first evaluation of this process

    @property
    def needs(self) -> frozenset[str]:
        return frozenset().union(*(t.term.needs for t in self.terms))

    def epoch_scheduled(self) -> list[str]:
        """Names of the terms that change at epoch ends (``epoch_schedule``: the preference coefficients)."""
        return [t.name for t in self.terms if getattr(t.term, "epoch_schedule", False)]

    def to(self, device: torch.device | str) -> LossSet:
        """Move every term's tensors to ``device`` (terms with a ``to`` method); returns self."""
        for t in self.terms:
            move = getattr(t.term, "to", None)
            if callable(move):
                move(device)
        return self

    def __call__(self, output: SegOutput, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        check = not self.checked and not torch.compiler.is_compiling()
        if check:
            self._check_output(output, batch)
        total: torch.Tensor | None = None
        parts: dict[str, torch.Tensor] = {}
        results: list[LossResult] = []
        pieces: dict[str, torch.Tensor] = {}
        clear_step_cache(batch)  # the terms share one-hot labels within this evaluation, never across them
        for t in self.terms:
            result = t.term(output, batch)
            if check:
                results.append(check_loss_result(result, self._owner(t), device=output.logits.device,
                                                 finite=False))
            value = result.total * t.weight
            total = value if total is None else total + value
            for key, part in result.parts.items():
                parts[key if key not in parts else f"{t.name}.{key}"] = part
            own = result.contributions or {t.name: result.total.detach()}
            for key, piece in own.items():
                pieces[key if key not in pieces else f"{t.name}.{key}"] = piece if t.weight == 1 else piece * t.weight
        assert total is not None
        parts["loss"] = total.detach()
        if check:
            self.checked = self._check_finite(output, batch, results)
        parts.update(shares(pieces, parts["loss"]))
        return total, parts

    def _owner(self, t: WeightedTerm) -> PluginEntry | str:
        return t.entry if t.entry is not None else owner_of(t.term, "loss term")

    def _check_output(self, output: SegOutput, batch: Batch) -> None:
        if self.backbone is None:
            return
        check_seg_output(output, self.backbone, batch=batch.image.shape[0], spatial=tuple(batch.image.shape[2:]),
                         num_classes=self.num_classes, num_modalities=self.num_modalities,
                         required=self.needs | {"logits"}, device=batch.image.device)

    def _check_finite(self, output: SegOutput, batch: Batch, results: list[LossResult]) -> bool:
        """One host read for every term's total; on a non-finite one, find whom to blame: nobody when the input
        is not finite, the backbone when its logits are not, else the term. Returns whether it could read: not
        while CUDA refuses host reads (the warm-up step a CUDA graph capture checks), so a later call does it."""
        totals = torch.stack([r.total.detach().float().reshape(()) for r in results])
        if totals.is_cuda and torch.cuda.get_sync_debug_mode() != 0:
            return False
        if bool(torch.isfinite(totals).all()):
            return True
        if not bool(torch.isfinite(batch.image).all()):
            return True  # not a plugin's doing: the input holds NaN or inf
        if self.backbone is not None and not bool(torch.isfinite(output.logits.detach()).all()):
            raise bug(self.backbone, "returned non-finite logits for a finite input")
        bad = next(i for i, v in enumerate(totals.tolist()) if not torch.isfinite(torch.tensor(v)))
        raise bug(self._owner(self.terms[bad]), f"returned a non-finite total ({totals[bad].item()}) for finite "
                                                "inputs; expected a finite loss")

    def state_dict(self) -> list[dict[str, Any]]:
        return [t.term.state_dict() for t in self.terms]

    def load_state_dict(self, states: list[dict[str, Any]]) -> None:
        for t, s in zip(self.terms, states, strict=True):
            t.term.load_state_dict(s)

    def on_epoch_end(self) -> None:
        for t in self.terms:
            t.term.on_epoch_end()


def shares(pieces: dict[str, torch.Tensor], total: torch.Tensor) -> dict[str, torch.Tensor]:
    """``{"share.<name>": piece / total}``, computed in one division on the device (no host read).

    Args:
        pieces: weighted contributions (scalars) that sum to ``total``; total: the loss (scalar).
    Returns:
        One detached scalar per piece (0 for a zero piece of a zero total: 1e-30 is added to the total).
    """
    if not pieces:
        return {}
    stacked = torch.stack([p.detach().float().reshape(()) for p in pieces.values()])
    values = stacked / (total.detach().float() + 1e-30)
    return {f"share.{name}": values[i] for i, name in enumerate(pieces)}
