"""The built-in demo dataset: synthetic phantoms generated once into the user's cache folder, then reused."""

from __future__ import annotations

import os
from pathlib import Path

from prism.atomic import StorageError, os_error_cause
from prism.config import SynthConfig
from prism.data.cache_format import settings_hash
from prism.data.cache_reader import CacheReader
from prism.errors import CacheError

from .synthetic import PHANTOM_VERSION, SynthSettings, write_synthetic_cache


def user_cache_dir() -> Path:
    """``$PRISM_CACHE_DIR``, else ``$XDG_CACHE_HOME/prism``, else ``~/.cache/prism``."""
    if os.environ.get("PRISM_CACHE_DIR"):
        return Path(os.environ["PRISM_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "prism"


def demo_cache_path(config: SynthConfig) -> Path:
    settings = {**config.model_dump(mode="json"), "phantom_version": PHANTOM_VERSION}  # new phantoms: new file
    return user_cache_dir() / f"synthetic-{settings_hash(settings)}.h5"


def ensure_demo_cache(config: SynthConfig) -> tuple[Path, bool]:
    """The demo cache for ``config``, generated if absent or unreadable. Returns (path, generated).

    Raises:
        StorageError: the user cache folder cannot be written (read-only, full, no permission): one line naming
            the folder and saying how to choose another.
    """
    path = demo_cache_path(config)
    try:
        if path.exists():
            try:
                CacheReader(path).close()
                return path, False
            except CacheError:
                path.unlink()
        settings = SynthSettings(cases=config.cases, shape=tuple(config.shape), seed=config.seed)
        write_synthetic_cache(str(path), settings, test_fraction=config.test_fraction)
    except (StorageError, OSError) as exc:
        cause = os_error_cause(exc) if isinstance(exc, OSError) else str(exc).rsplit(": ", 1)[-1]
        raise StorageError(f"{path.parent}: cannot write the built-in demo data there: {cause}; set "
                           "PRISM_CACHE_DIR to a writable folder, or pass --data CACHE") from None
    return path, True
