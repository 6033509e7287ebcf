"""prism-tiny's plugins keep prism's contracts: prism's own conformance suites, run on them (``prism.testing``).

Each check raises one error listing every failed check by name; run with ``python -m pytest tests``.
"""

from prism.testing import check_backbone, check_logger, check_loss, check_masking_policy, check_strategy


def test_backbone():
    check_backbone("tiny", options={"width": 4})


def test_loss_term():
    check_loss("uni_dice", backbone="tiny", backbone_options={"width": 4})


def test_masking_policy():
    check_masking_policy("drop_one")


def test_strategy():
    check_strategy("accumulate", options={"micro_batches": 2, "warmup": 1})


def test_logger():
    check_logger("jsonl")
