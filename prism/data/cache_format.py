"""The prism HDF5 cache, format v1 (documented in docs/cache-format.md).

Layout::

    /                     attrs: prism_format="prism-cache", format_version, prism_version, modalities (JSON),
                                 labels (JSON), label_map (JSON), preprocessing (JSON), preprocessing_hash,
                                 source_root, created, complete
    /provenance/sources   scalar UTF-8 JSON: [{case, role, path, size, sha256}, ...] (one per source file)
    /cases/<case_id>/image       float32 [M, D, H, W], chunked (M, c, c, c) (earlier caches: (1, c, c, c); both read
                                 the same), Blosc2 (default LZ4HC clevel 8 + shuffle, one block per chunk),
                                 Fletcher32
    /cases/<case_id>/label       uint8 [D, H, W], chunked (c, c, c), same filters
    /cases/<case_id>/foreground  int32 [N, 3], a sample of foreground voxel coordinates
                          attrs: availability (uint8 [M]), present (uint8 [M]), spacing [3], affine [4, 4],
                                 crop_box [3, 2], original_shape [3], site
    /splits/<name>        variable-length UTF-8 strings: the case ids of that split
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

FORMAT_NAME = "prism-cache"
FORMAT_VERSION = 1
#: versions this prism can read
READABLE_VERSIONS = frozenset({1})
DEFAULT_CHUNK = 32
FOREGROUND_SAMPLES = 4096

BRATS_LABELS = {0: "background", 1: "necrotic core", 2: "edema", 3: "enhancing tumour"}

#: root attributes every v1 cache carries
ROOT_ATTRS = ("prism_format", "format_version", "prism_version", "modalities", "labels", "label_map",
              "preprocessing", "preprocessing_hash", "created", "complete")
#: per-case attributes every v1 case carries (``present`` is optional: it defaults to ``availability``)
CASE_ATTRS = ("availability", "spacing", "affine", "crop_box", "original_shape", "site")
#: where the source file list lives (a scalar JSON string dataset; attributes are limited to 64 KiB)
SOURCES_PATH = "provenance/sources"
# the name a cache has while it is being built: see prism.atomic.temp_path


def settings_hash(settings: dict[str, Any]) -> str:
    """Stable hash of preprocessing settings (sorted JSON, SHA-256, 16 hex digits)."""
    blob = json.dumps(settings, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
