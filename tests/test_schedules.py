"""Learning-rate schedules (optim.schedule, optim.warmup_steps): each one's rates against its closed form written
here from the formulas, the default poly schedule bit for bit the plain PolynomialLR, a resume with more steps
stretching the schedule, and the config's one-line refusals."""

from __future__ import annotations

import math

import pytest
import torch

from prism.config import build_config
from prism.engine.schedules import build_schedule, stretch_schedule
from prism.errors import ConfigError

LR = 0.02


def optimizer(lr: float = LR) -> torch.optim.Optimizer:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(3))], lr=lr)


def rates(overrides: list[str], steps: int) -> list[float]:
    """The learning rate of each of ``steps`` steps (before step k+1 is taken), as the trainer sees it."""
    cfg = build_config(None, [f"optim.lr={LR}", f"train.steps={steps}", *overrides])
    opt = optimizer(cfg.optim.lr)
    sched = build_schedule(opt, cfg.optim, steps)
    seen = []
    for _ in range(steps):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return seen


def closed_form(schedule: str, s: int, steps: int, *, warmup: int = 0, start: float = 0.01, power: float = 0.9,
                min_lr: float = 0.0) -> float:
    """The rate of step s (0-based): linear warm-up, then the schedule over T = steps - warmup."""
    if s < warmup:
        return LR * (start + (1 - start) * s / warmup)
    t, horizon = s - warmup, steps - warmup
    if schedule == "poly":
        return LR * (1 - t / horizon) ** power
    if schedule == "cosine":
        return min_lr + (LR - min_lr) * (1 + math.cos(math.pi * t / horizon)) / 2
    return LR


@pytest.mark.parametrize(("overrides", "kwargs"), [
    ([], {"schedule": "poly"}),
    (["optim.poly_power=2.0"], {"schedule": "poly", "power": 2.0}),
    (["optim.schedule=cosine"], {"schedule": "cosine"}),
    (["optim.schedule=cosine", "optim.min_lr=0.001"], {"schedule": "cosine", "min_lr": 0.001}),
    (["optim.schedule=constant"], {"schedule": "constant"}),
    (["optim.schedule=cosine", "optim.warmup_steps=5"], {"schedule": "cosine", "warmup": 5}),
    (["optim.schedule=cosine", "optim.warmup_steps=4", "optim.warmup_start=0.1", "optim.min_lr=0.002"],
     {"schedule": "cosine", "warmup": 4, "start": 0.1, "min_lr": 0.002}),
    (["optim.warmup_steps=3"], {"schedule": "poly", "warmup": 3}),
    (["optim.schedule=constant", "optim.warmup_steps=6", "optim.warmup_start=0.5"],
     {"schedule": "constant", "warmup": 6, "start": 0.5}),
])
def test_each_schedule_follows_its_closed_form(overrides, kwargs):
    steps = 20
    got = rates(overrides, steps)
    schedule = kwargs.pop("schedule")
    expected = [closed_form(schedule, s, steps, **kwargs) for s in range(steps)]
    assert got == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_the_default_is_the_plain_polynomial_schedule_bit_for_bit():
    steps = 30
    reference_opt = optimizer()
    reference = torch.optim.lr_scheduler.PolynomialLR(reference_opt, total_iters=steps, power=0.9)
    expected = []
    for _ in range(steps):
        expected.append(reference_opt.param_groups[0]["lr"])
        reference_opt.step()
        reference.step()
    assert rates([], steps) == expected  # exactly: runs made before the other schedules existed do not change


@pytest.mark.parametrize(("overrides", "schedule", "warmup", "resume_at"), [
    ([], "poly", 0, 6),
    (["optim.schedule=cosine"], "cosine", 0, 6),
    (["optim.schedule=cosine", "optim.warmup_steps=4"], "cosine", 4, 6),  # under way when resumed
    (["optim.schedule=cosine", "optim.warmup_steps=4"], "cosine", 4, 2),  # still warming up
    (["optim.warmup_steps=4"], "poly", 4, 7),
])
def test_a_resume_with_more_steps_stretches_the_schedule(overrides, schedule, warmup, resume_at):
    planned, longer = 10, 16
    cfg = build_config(None, [f"optim.lr={LR}", f"train.steps={planned}", *overrides])
    opt = optimizer()
    sched = build_schedule(opt, cfg.optim, planned)
    for _ in range(resume_at):
        opt.step()
        sched.step()
    saved_opt, saved_sched = opt.state_dict(), sched.state_dict()
    # the resumed run: built for the new length, the checkpoint's state loaded, then stretched
    opt2 = optimizer()
    sched2 = build_schedule(opt2, cfg.optim, longer)
    opt2.load_state_dict(saved_opt)
    sched2.load_state_dict(saved_sched)
    stretch_schedule(sched2, longer)
    got = []
    for _ in range(resume_at, longer):
        got.append(opt2.param_groups[0]["lr"])
        opt2.step()
        sched2.step()
    expected = [closed_form(schedule, s, longer, warmup=warmup) for s in range(resume_at, longer)]
    assert got == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_an_unchanged_length_leaves_the_loaded_schedule_as_it_was():
    cfg = build_config(None, ["optim.schedule=cosine", "optim.warmup_steps=2", "train.steps=10"])
    opt = optimizer()
    sched = build_schedule(opt, cfg.optim, 10)
    for _ in range(5):
        opt.step()
        sched.step()
    before = (opt.param_groups[0]["lr"], sched.state_dict())
    stretch_schedule(sched, 10)
    assert opt.param_groups[0]["lr"] == before[0]
    assert sched.state_dict()["_schedulers"] == before[1]["_schedulers"]


def test_a_constant_schedule_has_no_length_to_stretch():
    cfg = build_config(None, ["optim.schedule=constant", "train.steps=10"])
    opt = optimizer()
    sched = build_schedule(opt, cfg.optim, 10)
    for _ in range(4):
        opt.step()
        sched.step()
    stretch_schedule(sched, 50)
    assert opt.param_groups[0]["lr"] == LR


def test_the_rates_of_a_capturable_optimizer_tensor_are_stretched_in_place():
    cfg = build_config(None, ["train.steps=10"])
    param = torch.nn.Parameter(torch.zeros(2))
    lr = torch.tensor(LR)
    opt = torch.optim.Adam([param], lr=lr, foreach=False)  # an LR tensor, as train.cuda_graphs builds it
    sched = build_schedule(opt, cfg.optim, 10)
    for _ in range(5):
        opt.step()
        sched.step()
    stretch_schedule(sched, 20)
    assert opt.param_groups[0]["lr"] is lr  # the tensor a captured graph reads
    assert float(lr) == pytest.approx(LR * (1 - 5 / 20) ** 0.9, rel=1e-6)


@pytest.mark.parametrize(("overrides", "message"), [
    (["optim.warmup_steps=10", "train.steps=10"],
     "optim.warmup_steps: 10 warm-up steps leave none of the train.steps=10 for optim.schedule"),
    (["optim.min_lr=0.001"], "optim.min_lr: only the cosine schedule ends at min_lr (optim.schedule is 'poly')"),
    (["optim.schedule=cosine", "optim.min_lr=0.5"], "optim.min_lr: must be below optim.lr"),
    (["optim.schedule=linear"], "optim.schedule: Input should be 'poly', 'cosine' or 'constant'"),
    (["optim.warmup_start=0"], "optim.warmup_start: Input should be greater than 0"),
    (["optim.warmup_steps=-1"], "optim.warmup_steps: Input should be greater than or equal to 0"),
])
def test_schedule_mistakes_are_one_line_naming_the_field(overrides, message):
    with pytest.raises(ConfigError) as err:
        build_config(None, overrides)
    assert message in str(err.value)
    assert "\n" not in str(err.value)
