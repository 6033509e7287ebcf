"""The prism HDF5 cache, format v1 (documented in docs/cache-format.md).

Layout::

    /                     attrs: prism_format="prism-cache", format_version, prism_version, modalities (JSON),
                                 labels (JSON), label_map (JSON), preprocessing (JSON), preprocessing_hash,
                                 source_root, created, complete
    /provenance/sources   scalar UTF-8 JSON: [{case, role, path, size, sha256}, ...] (one per source file)
    /cases/<case_id>/image       float32 [M, D, H, W], chunked (M, 16, 16, w): whole rows of the last axis, w = W
                                 split in equal parts of at most 192 (earlier caches: (M, c, c, c) or (1, c, c, c);
                                 all read the same), Blosc2 (default LZ4HC clevel 9 + shuffle, one block per chunk),
                                 Fletcher32
    /cases/<case_id>/label       uint8 [D, H, W], chunked (16, 16, w), same filters
    /cases/<case_id>/foreground  int32 [N, 3], a sample of foreground voxel coordinates
                          attrs: availability (uint8 [M]), present (uint8 [M]), spacing [3], affine [4, 4],
                                 crop_box [3, 2], original_shape [3], site
    /splits/<name>        variable-length UTF-8 strings: the case ids of that split
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

import numpy as np

FORMAT_NAME = "prism-cache"
FORMAT_VERSION = 1
#: versions this prism can read
READABLE_VERSIONS = frozenset({1})
#: chunk edges along the spatial axes (D, H, W); 0: the whole axis, split in equal parts of at most MAX_ROW voxels
DEFAULT_CHUNK: tuple[int, int, int] = (16, 16, 0)
MAX_ROW = 192
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


def chunk_shape(chunk: int | Sequence[int], spatial: Sequence[int]) -> tuple[int, int, int]:
    """The spatial chunk shape for a volume of shape ``spatial``: ``chunk`` is one edge for all three axes or three
    edges, where 0 takes the whole axis (split in equal parts of at most :data:`MAX_ROW` voxels); every edge is
    clipped to the volume.

    >>> chunk_shape((16, 16, 0), (140, 170, 150))
    (16, 16, 150)
    >>> chunk_shape((16, 16, 0), (140, 170, 400))
    (16, 16, 134)
    >>> chunk_shape(32, (140, 20, 150))
    (32, 20, 32)
    """
    edges = (int(chunk),) * 3 if isinstance(chunk, int | np.integer) else tuple(int(c) for c in chunk)
    if len(edges) != 3 or any(c < 0 for c in edges):
        raise ValueError(f"chunk must be one edge or three (0: the whole axis), got {chunk!r}")
    out = []
    for c, n in zip(edges, spatial, strict=True):
        if c == 0:
            c = -(-n // -(-n // MAX_ROW))  # n in equal parts of at most MAX_ROW
        out.append(max(1, min(c, n)))
    return tuple(out)


def settings_hash(settings: dict[str, Any]) -> str:
    """Stable hash of preprocessing settings (sorted JSON, SHA-256, 16 hex digits)."""
    blob = json.dumps(settings, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
