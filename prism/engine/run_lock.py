"""One writer per run folder: ``RUN/.prism-train.lock`` names the holder (pid, host, start time).

The lock is an ``flock`` on that file, so it dies with its process: a lock file left by a killed trainer is
stale and simply taken over. A second trainer on the same folder is refused with one line naming the holder.
Readers (``prism-eval``, ``prism-predict``) take no lock. Within one process the lock is re-entrant (a test that
builds two Trainers on one folder holds it once).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path

from ..atomic import ensure_folder, storage_error
from ..errors import PrismError

LOCK_NAME = ".prism-train.lock"


class RunLockedError(PrismError):
    """Another process is writing the run folder."""


_HELD: dict[str, tuple[int, int]] = {}  # real path of the lock file -> (fd, holders in this process)


def _holder(fd: int) -> str:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        info = json.loads(os.read(fd, 4096).decode() or "{}")
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(info["started"])))
        return f"pid {int(info['pid'])} on {info['host']}, since {since}"
    except (OSError, ValueError, KeyError, TypeError):
        return "a process that has not written its name yet"


class RunLock:
    """Exclusive lock of a run folder for one training process.

    Args:
        run_dir: the run folder (created if needed).

    Raises:
        RunLockedError: on :meth:`acquire`, when another live process holds the folder.
        StorageError: the folder or its lock file cannot be created (read-only, no permission).
    """

    def __init__(self, run_dir: str | os.PathLike[str]) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self._key: str | None = None

    def acquire(self) -> RunLock:
        ensure_folder(self.run_dir)
        key = os.path.realpath(self.path)
        if key in _HELD:
            fd, count = _HELD[key]
            _HELD[key] = (fd, count + 1)
            self._key = key
            return self
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as exc:
            raise storage_error(self.path, exc, "cannot create the run lock") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise RunLockedError(f"{self.run_dir}: another prism-train ({holder}) is writing this run folder; "
                                 "wait for it to finish or stop it (a lock left by a dead process is taken over "
                                 "automatically)") from None
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(info).encode(), 0)
        except OSError as exc:
            os.close(fd)
            raise storage_error(self.path, exc, "cannot write the run lock") from None
        _HELD[key] = (fd, 1)
        self._key = key
        return self

    def release(self) -> None:
        """Give the folder up (the file stays, emptied: removing it would race with a waiting writer)."""
        key, self._key = self._key, None
        if key is None or key not in _HELD:
            return
        fd, count = _HELD[key]
        if count > 1:
            _HELD[key] = (fd, count - 1)
            return
        del _HELD[key]
        try:
            os.ftruncate(fd, 0)
        except OSError:
            pass
        os.close(fd)  # closing the descriptor releases the flock

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
