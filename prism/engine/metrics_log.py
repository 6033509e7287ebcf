"""The run's CSV logs: :class:`prism.logger.CsvLog`, a CSV file kept consistent with the checkpoint on resume (it
lives with the Logger contract, where logger plugins import it from)."""

from __future__ import annotations

from ..logger import CsvLog

__all__ = ["CsvLog"]
