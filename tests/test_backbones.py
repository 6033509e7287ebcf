"""Every registered backbone (third-party ones included) through the conformance kit's backbone suite
(``prism.testing.check_backbone``: the SegOutput contract, masked channels ignored, gradients, determinism, state
round trip, one-line input errors, combination_logits, device moves).

Each backbone is built with small options (``width=4``, ``depth=3``, ``dim=32`` where its constructor takes them).
"""

from __future__ import annotations

import inspect

import pytest

from prism.registry import get_registry, list_plugins
from prism.testing import BACKBONE_CHECKS, check_backbone

SMALL = {"width": 4, "depth": 3, "dim": 32}
BACKBONES = list_plugins("backbone")


def small_options(name: str) -> dict:
    params = inspect.signature(get_registry().get("backbone", name).factory).parameters
    return {k: v for k, v in SMALL.items() if k in params}


@pytest.mark.parametrize("name", BACKBONES)
def test_backbone_passes_the_conformance_suite(name):
    report = check_backbone(name, options=small_options(name))
    assert report.passed == list(BACKBONE_CHECKS)  # none skipped on CPU: device_move runs on 'meta'
