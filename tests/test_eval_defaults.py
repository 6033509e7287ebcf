"""Evaluation defaults have one source (EvalOptions): the config, evaluate() and evaluate_kwargs agree with it."""

from __future__ import annotations

import inspect
import math

import pytest

from prism.config import EvalConfig, build_config
from prism.errors import ConfigError
from prism.evaluation.options import BRATS2023_EMPTY_HD95, BRATS_EMPTY_HD95, DEFAULTS, EvalOptions
from prism.evaluation.report import evaluate, evaluate_kwargs

# config field -> EvalOptions field
FIELDS = {"et_postprocess_voxels": "et_postprocess_voxels", "window": "window", "overlap": "overlap",
          "sw_batch_size": "sw_batch_size", "combos_per_pass": "combos_per_pass", "hd95": "compute_hd95",
          "hd95_convention": "hd95_convention", "stitch_on_cpu": "stitch_on_cpu", "lesion_metrics": "lesion_metrics",
          "tta": "tta"}


def test_empty_set_hd95_follows_the_convention():
    assert math.isclose(BRATS_EMPTY_HD95, math.sqrt(240**2 + 240**2 + 155**2))
    assert EvalConfig().hd95_empty == "convention" and DEFAULTS.hd95_empty is None
    assert DEFAULTS.empty_hd95 == BRATS_EMPTY_HD95  # exactly, not 373.13
    assert EvalOptions(hd95_convention="brats2023").empty_hd95 == BRATS2023_EMPTY_HD95 == 374.0
    settings = EvalOptions(hd95_convention="brats2023").settings()
    assert settings["hd95_convention"] == "brats2023" and settings["hd95_empty"] == 374.0
    assert EvalOptions(compute_hd95=False).settings()["hd95_convention"] is None


def test_config_evaluate_and_kwargs_share_the_defaults():
    config, signature = EvalConfig(), inspect.signature(evaluate).parameters
    kwargs = evaluate_kwargs(object())  # a section without any field: every default
    for cfg_name, opt_name in FIELDS.items():
        expected = getattr(DEFAULTS, opt_name)
        assert getattr(config, cfg_name) == expected, cfg_name
        assert signature[cfg_name].default == expected, cfg_name
        assert kwargs[cfg_name] == expected, cfg_name
    assert signature["hd95_empty"].default is None and kwargs["hd95_empty"] is None
    assert evaluate_kwargs(config) == {k: v for k, v in kwargs.items()}


def test_hd95_empty_in_the_config_maps_to_the_options():
    def empty(value: str) -> float | None:
        return evaluate_kwargs(build_config(None, [f"eval.hd95_empty={value}"]).eval)["hd95_empty"]

    assert empty("convention") is None and empty("12.5") == 12.5 and math.isnan(empty("null"))
    for bad in ("-1", ".inf", "abc", "true"):
        with pytest.raises(ConfigError, match="eval.hd95_empty"):
            build_config(None, [f"eval.hd95_empty={bad}"])


@pytest.mark.parametrize("field, value", [("sw_batch_size", 0), ("overlap", 1.0), ("combos_per_pass", 0),
                                          ("window", (0, 16, 16)), ("hd95_convention", "panoptica"),
                                          ("hd95_empty", -1.0), ("sigma_scale", math.inf)])
def test_options_out_of_range_are_one_line_errors(field, value):
    with pytest.raises(ConfigError, match=f"eval.{field}"):
        EvalOptions(**{field: value})
