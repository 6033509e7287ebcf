"""Preference-aware regularisation: RP, gate, coefficient updates, schedule, state round trip."""

from __future__ import annotations

import io
import math

import pytest
import torch

from prism.plugins.losses import (
    PreferenceRegulariser,
    initial_coefficients,
    preference_gate,
    project_coefficients,
    relative_preference,
)


def test_relative_preference_and_gate_known_values():
    gap = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    mask = torch.tensor([[True, True, True, False]])
    rp = relative_preference(gap, mask)  # mean over available = 2
    torch.testing.assert_close(rp, torch.tensor([[0.5, 0.0, -0.5, 0.0]]))
    torch.testing.assert_close(preference_gate(rp, mask), torch.tensor([[0.0, 0.0, 1.0, 0.0]]))
    zero = relative_preference(torch.zeros(1, 2), torch.ones(1, 2, dtype=torch.bool))
    assert torch.isfinite(zero).all()


def test_initial_coefficients_from_missing_rates():
    torch.testing.assert_close(initial_coefficients([0.5, 0.0, 0.75]), torch.tensor([2.0, 1.0, 4.0]))
    with pytest.raises(ValueError):
        initial_coefficients([1.0])


def test_projection_passion_and_clamp():
    e = torch.tensor([0.05, 1.0, 5.0, 1.0])
    clamped = [0.1, 1.0, 4.0, 1.0]
    norm = math.sqrt(sum(c * c for c in clamped))
    torch.testing.assert_close(project_coefficients(e), torch.tensor([2 * c / norm for c in clamped]))
    torch.testing.assert_close(project_coefficients(e, projection="clamp"), torch.tensor(clamped))
    torch.testing.assert_close(project_coefficients(torch.ones(4)), torch.ones(4))


def test_epoch_update_known_value_and_schedule():
    reg = PreferenceRegulariser(4)
    mask = torch.tensor([[True, True, True, False], [True, False, False, False]])
    reg.observe(torch.tensor([[0.5, 0.0, -0.5, 9.0], [0.3, 7.0, 7.0, 7.0]]) * mask, mask)
    reg.on_epoch_end()
    raw = [1 - 0.01 * 0.4, 1.0, 1 + 0.01 * 0.5, 1.0]  # mean RP: flair (0.5+0.3)/2; t2 never seen: no change
    norm = math.sqrt(sum(c * c for c in raw))
    torch.testing.assert_close(reg.coefficients, torch.tensor([2 * c / norm for c in raw]))
    assert reg.epoch == 1 and reg.gamma == pytest.approx(0.01)
    for _ in range(99):
        reg.on_epoch_end()
    assert reg.epoch == 100 and reg.gamma == pytest.approx(0.015)


def test_state_round_trip_with_weights_only_load():
    reg = PreferenceRegulariser(3, missing_rates=[0.2, 0.0, 0.5])
    mask = torch.ones(2, 3, dtype=torch.bool)
    reg.observe(torch.randn(2, 3), mask)
    reg.on_epoch_end()
    reg.observe(torch.randn(2, 3), mask)
    buf = io.BytesIO()
    torch.save(reg.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    other = PreferenceRegulariser(3)
    other.load_state_dict(state)
    assert other.state_dict() == reg.state_dict()
    reg.on_epoch_end()
    other.on_epoch_end()
    torch.testing.assert_close(other.coefficients, reg.coefficients)
    with pytest.raises(ValueError):
        PreferenceRegulariser(4).load_state_dict(state)


def test_rejects_bad_shapes_and_options():
    with pytest.raises(ValueError):
        relative_preference(torch.zeros(2, 3), torch.ones(2, 2, dtype=torch.bool))
    with pytest.raises(ValueError):
        PreferenceRegulariser(4, missing_rates=[0.1])
    with pytest.raises(ValueError):
        PreferenceRegulariser(4, projection="simplex")
