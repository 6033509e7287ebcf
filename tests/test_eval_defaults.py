"""Evaluation and adaptation defaults have one source each: EvalOptions reads the config's ``eval`` defaults,
``EvalOptions.from_config`` carries every field of a run's section, the fine-tuning defaults come from
``prism.adapt.ADAPT_DEFAULTS``, and every function of the evaluation stack defaults to the same objects."""

from __future__ import annotations

import dataclasses
import inspect
import math

import pytest

from prism.adapt import ADAPT_DEFAULTS
from prism.config import EvalConfig, build_config
from prism.errors import ConfigError
from prism.evaluation.adaptation import AdaptationSettings
from prism.evaluation.options import BRATS2023_EMPTY_HD95, BRATS_EMPTY_HD95, DEFAULTS, EvalOptions, eval_config_with

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


def test_config_and_options_share_the_defaults():
    config = EvalConfig()
    for cfg_name, opt_name in FIELDS.items():
        assert getattr(config, cfg_name) == getattr(DEFAULTS, opt_name), cfg_name
    assert EvalOptions.from_config(config) == DEFAULTS
    assert EvalOptions.from_config(config, channels_last=True) == dataclasses.replace(DEFAULTS, channels_last=True)


def test_from_config_carries_every_field_of_a_section():
    section = build_config(None, ["eval.et_postprocess_voxels=500", "eval.window=[32,32,16]", "eval.overlap=0.25",
                                  "eval.sw_batch_size=3", "eval.combos_per_pass=5", "eval.hd95=false",
                                  "eval.hd95_convention=brats2023", "eval.stitch_on_cpu=true",
                                  "eval.lesion_metrics=true", "eval.tta=mirror", "eval.hd95_empty=12.5"]).eval
    got = EvalOptions.from_config(section, channels_last=True)
    assert got == EvalOptions(window=(32, 32, 16), overlap=0.25, sw_batch_size=3, combos_per_pass=5,
                              et_postprocess_voxels=500, compute_hd95=False, hd95_convention="brats2023",
                              hd95_empty=12.5, channels_last=True, stitch_on_cpu=True, lesion_metrics=True,
                              tta="mirror")
    assert {f.name for f in dataclasses.fields(EvalOptions)} - set(FIELDS.values()) == {
        "hd95_empty", "channels_last", "sigma_scale", "lesion_convention"}  # mapped apart, or not in the config


def test_the_evaluation_stack_defaults_to_the_one_options_object():
    from prism.engine.validation import validation_dice
    from prism.evaluation.adaptation_curve import adaptation_curve
    from prism.evaluation.inference import predict_combinations, predict_logits
    from prism.evaluation.report import adapt_and_evaluate, evaluate
    from prism.evaluation.scoring import evaluate_cases

    for fn in (predict_logits, predict_combinations, evaluate_cases, evaluate, adapt_and_evaluate, validation_dice,
               adaptation_curve):
        params = inspect.signature(fn).parameters
        assert params["options"].default is DEFAULTS, fn.__name__
        assert not {"window", "overlap", "sigma_scale", "combos_per_pass", "tta"} & set(params), fn.__name__


def test_adaptation_defaults_come_from_prism_adapt():
    from prism.strategy import Strategy

    config = EvalConfig()
    assert (config.adapt_steps, config.adapt_lr, config.adapt_optimizer) == (
        ADAPT_DEFAULTS.steps, ADAPT_DEFAULTS.lr, ADAPT_DEFAULTS.optimizer)
    assert (Strategy.adapt_steps, Strategy.adapt_lr) == (ADAPT_DEFAULTS.steps, ADAPT_DEFAULTS.lr)
    default = AdaptationSettings(site="s")
    assert (default.support_cases, default.steps, default.lr, default.optimizer, default.patch_size, default.split,
            default.seed) == (config.adapt_cases, config.adapt_steps, config.adapt_lr, config.adapt_optimizer,
                              config.adapt_patch_size, config.adapt_split, config.adapt_seed)


def test_adaptation_settings_read_every_adapt_field_of_a_section():
    assert AdaptationSettings.from_config(EvalConfig()) is None  # off while adapt_site is unset
    section = build_config(None, ["eval.adapt_site=site1", "eval.adapt_cases=2", "eval.adapt_steps=50",
                                  "eval.adapt_lr=0.05", "eval.adapt_optimizer=adam", "eval.adapt_patch_size=[8,8,8]",
                                  "eval.adapt_split=heldout", "eval.adapt_seed=7"]).eval
    assert AdaptationSettings.from_config(section) == AdaptationSettings(
        site="site1", support_cases=2, steps=50, lr=0.05, optimizer="adam", patch_size=(8, 8, 8), split="heldout",
        seed=7)


def test_flags_over_a_section_are_checked_as_the_config_checks_them():
    section = build_config(None, ["eval.adapt_steps=50"]).eval
    changed = eval_config_with(section, {"adapt_site": "3", "overlap": 0.25})
    assert (changed.adapt_site, changed.adapt_steps, changed.overlap) == ("3", 50, 0.25)
    assert section.adapt_site is None  # the run's section itself is left as it was
    with pytest.raises(ConfigError, match=r"^command line: eval\.overlap: .*less than 1"):
        eval_config_with(section, {"overlap": 1.5})


def test_hd95_empty_in_the_config_maps_to_the_options():
    def empty(value: str) -> float | None:
        return EvalOptions.from_config(build_config(None, [f"eval.hd95_empty={value}"]).eval).hd95_empty

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


def test_command_line_help_is_generated_from_the_defaults(monkeypatch):
    """The flags' help reads EvalOptions' and the config's defaults when the parser is built: other defaults there
    show in the help, so no number is typed twice."""
    import prism.config
    import prism.evaluation.options
    from prism.cli.evaluate import adapt_parser, parser
    from prism.cli.predict import parser as predict_parser

    class Other(EvalConfig):
        adapt_steps: int = 57
        adapt_lr: float = 0.0375

    monkeypatch.setattr(prism.evaluation.options, "DEFAULTS", EvalOptions(overlap=0.375, sw_batch_size=7))
    monkeypatch.setattr(prism.config, "EvalConfig", Other)
    text = " ".join(parser().format_help().split())
    assert "eval.overlap, 0.375 unless set" in text and "eval.sw_batch_size, 7 unless set" in text
    assert "eval.adapt_steps, 57 unless set" in text and "eval.adapt_lr, 0.0375 unless set" in text
    assert "eval.overlap, 0.375 unless set" in " ".join(predict_parser().format_help().split())
    assert "eval.adapt_lr, 0.0375 unless set" in " ".join(adapt_parser().format_help().split())
