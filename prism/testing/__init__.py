"""prism's conformance kit for plugin authors: prism's own registry-wide suites, run on any plugin.

Each ``check_*`` function builds the plugin through the registry (a registered name, or a factory registered for
the check), runs every check of its suite whatever the others gave, and raises one :class:`ConformanceError`
naming every failed check (or returns the :class:`ConformanceReport` when all passed)::

    from prism.testing import check_backbone, check_logger, check_loss, check_masking_policy, check_strategy

    def test_my_plugins_keep_prism_contracts():
        check_backbone("tiny", options={"width": 4})
        check_loss("uni_dice")
        check_masking_policy("drop_one")
        check_strategy("accumulate", options={"micro_batches": 2})
        check_logger("jsonl")

prism's own test suite runs the same functions on every built-in plugin. The checks behind them (what a step,
a mask, a SegOutput and a loss value must be) are in :mod:`prism.seams`.
"""

from __future__ import annotations

from ._report import CheckFailed, ConformanceError, ConformanceReport, SkipCheck
from .backbone import BACKBONE_CHECKS, check_backbone
from .logger import LOGGER_CHECKS, check_logger
from .loss import LOSS_CHECKS, check_loss
from .masking import MASKING_CHECKS, check_masking_policy
from .strategy import STRATEGY_CHECKS, TINY_RUN, check_strategy

__all__ = [
    "check_backbone", "check_loss", "check_masking_policy", "check_strategy", "check_logger",
    "ConformanceError", "ConformanceReport", "CheckFailed", "SkipCheck",
    "BACKBONE_CHECKS", "LOSS_CHECKS", "MASKING_CHECKS", "STRATEGY_CHECKS", "LOGGER_CHECKS", "TINY_RUN",
]
