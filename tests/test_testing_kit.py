"""The conformance kit (prism.testing) fails planted broken plugins of each kind, naming every failed check at once;
its bookkeeping (skip, reports) works as documented. The built-in plugins pass it in test_backbones.py,
test_losses_registry.py, test_masking.py and test_strategies.py."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from prism.backbone import Backbone
from prism.loss import LossResult, LossTerm
from prism.masking import MaskingPolicy
from prism.outputs import SegOutput
from prism.strategy import Strategy
from prism.testing import (
    MASKING_CHECKS,
    ConformanceError,
    check_backbone,
    check_loss,
    check_masking_policy,
    check_strategy,
)


def failed_checks(exc: pytest.ExceptionInfo) -> set[str]:
    """The check names the ConformanceError's message lists (``- name: why`` lines)."""
    return set(re.findall(r"^- (\w+): ", str(exc.value), flags=re.M))


# ---- backbones ----------------------------------------------------------------------------------------------------

class LeakyNet(Backbone):
    """Reads the masked-out channels, declares 'uni' without returning it, keeps a tensor outside its buffers and
    never checks its input."""

    provides = frozenset({"logits", "uni"})

    def __init__(self, modalities, num_classes, *, width: int = 4):
        super().__init__(modalities, num_classes)
        self.conv = nn.Conv3d(len(modalities), num_classes, 3, padding=1)
        self.scale = torch.ones(1)  # not a buffer: stays behind on model.to(device)

    def forward(self, image, mask):
        return SegOutput(logits=self.conv(image) * self.scale)


def test_broken_backbone_fails_every_check_it_breaks_in_one_error():
    with pytest.raises(ConformanceError) as exc:
        check_backbone(LeakyNet)
    assert failed_checks(exc) == {"train_mode_parts", "masked_channels_ignored", "bad_input_one_line_error",
                                  "device_move"}
    message = str(exc.value)
    assert message.splitlines()[0] == "backbone 'LeakyNet' (plugin 'in-process') failed 4 of 12 conformance checks:"
    assert "returned no ['uni']" in message and "change when masked-out channels hold noise" in message


def test_a_backbone_that_does_not_build_fails_every_check():
    def broken(modalities, num_classes):
        raise RuntimeError("cannot build")

    with pytest.raises(ConformanceError) as exc:
        check_backbone(broken)
    assert "builds: meta-strategy" not in str(exc.value)
    assert re.search(r"- builds: backbone .*raised RuntimeError while building it", str(exc.value))
    assert "- device_move: not run: the backbone did not build" in str(exc.value)


# ---- loss terms ---------------------------------------------------------------------------------------------------

class FirstSampleDice(LossTerm):
    """Scores the batch's first sample only and keeps a Python object in its state."""

    needs = frozenset({"logits"})

    def __init__(self, modalities, num_classes):
        super().__init__(modalities, num_classes)
        self.seen = []

    def __call__(self, output: SegOutput, batch) -> LossResult:
        self.seen.append(object())
        p = output.logits.softmax(1)[0]
        total = 1 - p.max(0).values.mean()
        return LossResult(total=total, parts={"first": total.detach()})

    def state_dict(self):
        return {"seen": self.seen}


class NaNLoss(LossTerm):
    """Returns NaN."""

    def __call__(self, output, batch) -> LossResult:
        return LossResult(total=output.logits.sum() * float("nan"))


def test_broken_loss_terms_fail_the_checks_they_break():
    with pytest.raises(ConformanceError) as exc:
        check_loss(FirstSampleDice)
    assert failed_checks(exc) == {"batch_order_invariant", "state_round_trip"}
    assert "- state_round_trip: loss 'FirstSampleDice' (plugin 'in-process') returned a state_dict() that a " \
           "weights-only checkpoint cannot store (it holds object)" in str(exc.value)
    with pytest.raises(ConformanceError) as exc:
        check_loss(NaNLoss)
    assert {"value_contract", "reads_only_its_needs", "second_order_finite"} <= failed_checks(exc)
    assert "non-finite total" in str(exc.value)


# ---- masking policies ---------------------------------------------------------------------------------------------

class NoneLeft(MaskingPolicy):
    """Drops every modality."""

    def __call__(self, availability, generator):
        return torch.zeros_like(availability, dtype=torch.bool)


class GlobalDraw(MaskingPolicy):
    """Draws from torch's global random state, and changes the availability it is given."""

    def __call__(self, availability, generator):
        keep = torch.rand(availability.shape) < 0.5
        availability &= keep | ~keep.any(1, keepdim=True)
        return availability.clone()


def test_broken_masking_policies_fail_the_checks_they_break():
    with pytest.raises(ConformanceError) as exc:
        check_masking_policy(NoneLeft)
    assert failed_checks(exc) == {"mask_contract"}
    assert "no modality in row(s)" in str(exc.value)
    with pytest.raises(ConformanceError) as exc:
        check_masking_policy(GlobalDraw)
    assert failed_checks(exc) == {"mask_contract", "reproducible_from_its_generator", "leaves_global_rng_alone",
                                  "availability_unchanged", "state_round_trip"}


def test_report_without_raising_and_skip():
    report = check_masking_policy(NoneLeft, skip=["mask_contract"], raise_on_failure=False)
    assert report.ok and report.skipped == {"mask_contract": "skipped by the caller"}
    assert report.passed == [c for c in MASKING_CHECKS if c != "mask_contract"]
    report = check_masking_policy(NoneLeft, raise_on_failure=False)
    assert not report.ok and "FAILED mask_contract" in report.summary()
    with pytest.raises(ValueError, match="unknown check"):
        check_masking_policy("full", skip=["mask_contarct"])


# ---- strategies ---------------------------------------------------------------------------------------------------

class ReturnsTensor(Strategy):
    """Returns the loss tensor instead of a dict."""

    def step(self, ctx):
        loss, _ = ctx.compute_loss(ctx.next_batch("train"))
        ctx.zero_grad()
        ctx.backward(loss)
        ctx.optimizer_step()
        return loss.detach()


class Idle(Strategy):
    """Computes the loss but never updates."""

    def step(self, ctx):
        _, parts = ctx.compute_loss(ctx.next_batch("train"))
        return parts


class Forgetful(Strategy):
    """Scales its updates by a counter it does not checkpoint."""

    def __init__(self):
        self.calls = 0

    def step(self, ctx):
        self.calls += 1
        ctx.zero_grad()
        loss, parts = ctx.compute_loss(ctx.next_batch("train"))
        ctx.backward(loss * self.calls)
        ctx.optimizer_step()
        return parts


@pytest.mark.slow
def test_broken_strategies_fail_the_checks_they_break(tiny_cache):
    with pytest.raises(ConformanceError) as exc:
        check_strategy(ReturnsTensor, cache=tiny_cache)
    assert "- step_contract: meta-strategy 'ReturnsTensor' (plugin 'in-process') returned" in str(exc.value)
    assert "returned Tensor float32 [] on cpu from step(); expected a dict" in str(exc.value)
    with pytest.raises(ConformanceError) as exc:
        check_strategy(Idle, cache=tiny_cache)
    assert failed_checks(exc) == {"makes_progress"}
    with pytest.raises(ConformanceError) as exc:
        check_strategy(Forgetful, cache=tiny_cache)
    assert failed_checks(exc) == {"exact_resume"}
    assert "a run resumed from its step-2 checkpoint ends with other weights" in str(exc.value)
