"""Evaluation defaults have one source (EvalOptions): the config, evaluate() and evaluate_kwargs agree with it."""

from __future__ import annotations

import inspect
import math

from prism.config import EvalConfig
from prism.evaluation.hausdorff import BRATS_EMPTY_HD95
from prism.evaluation.options import DEFAULTS
from prism.evaluation.report import evaluate, evaluate_kwargs

# config field -> EvalOptions field
FIELDS = {"et_postprocess_voxels": "et_postprocess_voxels", "window": "window", "overlap": "overlap",
          "sw_batch_size": "sw_batch_size", "combos_per_pass": "combos_per_pass", "hd95": "compute_hd95",
          "hd95_empty": "hd95_empty", "stitch_on_cpu": "stitch_on_cpu", "tta": "tta"}


def test_empty_set_hd95_is_the_brats_diagonal_everywhere():
    assert math.isclose(BRATS_EMPTY_HD95, math.sqrt(240**2 + 240**2 + 155**2))
    assert EvalConfig().hd95_empty == DEFAULTS.hd95_empty == BRATS_EMPTY_HD95  # exactly, not 373.13


def test_config_evaluate_and_kwargs_share_the_defaults():
    config, signature = EvalConfig(), inspect.signature(evaluate).parameters
    kwargs = evaluate_kwargs(object())  # a section without any field: every default
    for cfg_name, opt_name in FIELDS.items():
        expected = getattr(DEFAULTS, opt_name)
        assert getattr(config, cfg_name) == expected, cfg_name
        assert signature[cfg_name].default == expected, cfg_name
        assert kwargs[cfg_name] == expected, cfg_name
    assert evaluate_kwargs(config) == {k: v for k, v in kwargs.items()}
