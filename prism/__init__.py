"""prism: 3D multimodal segmentation with missing modalities and meta-learning, built from plugins."""

from __future__ import annotations

import logging

__version__ = "0.1.0.dev0"

# a library logs and never prints: records go nowhere until the application configures logging (prism's commands
# show them on the terminal)
logging.getLogger(__name__).addHandler(logging.NullHandler())

from .batch import Batch  # noqa: E402
from .errors import PrismError  # noqa: E402
from .modalities import BRATS_MODALITIES, Combination, combination_masks, enumerate_combinations  # noqa: E402
from .outputs import SegOutput  # noqa: E402

__all__ = [
    "__version__", "Batch", "PrismError", "SegOutput", "BRATS_MODALITIES", "Combination", "combination_masks",
    "enumerate_combinations",
]
