"""One writer per run folder: ``RUN/.prism-train.lock`` names the holder (pid, host, start time, lock kind).

Two kinds of lock, chosen per file system:

* ``flock`` (where it works: local disks, NFS with a lock manager, Lustre with ``flock``): an ``flock`` on that
  file, so it dies with its process; a lock file left by a killed trainer is stale and simply taken over. On
  release the file stays, emptied (removing it would race with a waiting writer).
* ``file`` (where ``flock`` fails: NFS mounted ``nolock``, some FUSE and object-store mounts): the file itself is
  the lock, created with ``O_CREAT | O_EXCL`` (atomic on NFSv3+), holding host, pid and a token; the holder touches
  it every :data:`HEARTBEAT_S` seconds and removes it on release. A lock is stale when its process is dead (same
  host) or its file was not touched for :data:`STALE_AFTER_S` seconds (any host: clocks are assumed within a
  minute, as NTP keeps them); a stale lock is renamed away (one taker wins) and taken over.

``PRISM_RUN_LOCK=file`` forces the lock file (for mounts where ``flock`` succeeds but only locks on one host, e.g.
NFS with ``local_lock=flock``; every host must then use it); ``flock`` forces ``flock``; ``auto`` (default) tries
``flock`` first. :attr:`RunLock.kind` says which one is held, and falling back is logged as a warning.

A second trainer on the same folder is refused with one line naming the holder. Readers (``prism-eval``,
``prism-predict``) take no lock. Within one process the lock is re-entrant (a test that builds two Trainers on one
folder holds it once).
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import secrets
import socket
import threading
import time
from pathlib import Path
from typing import Any

from ..atomic import ensure_folder, pid_alive, storage_error
from ..errors import ConfigError, PrismError

logger = logging.getLogger(__name__)

LOCK_NAME = ".prism-train.lock"
#: how often the holder of a ``file`` lock touches it (seconds)
HEARTBEAT_S = 30.0
#: a ``file`` lock not touched for this long is stale, whichever host holds it (seconds)
STALE_AFTER_S = 300.0
#: an empty lock file (flock's leftover, or a writer between create and write) is stale after this (seconds)
EMPTY_STALE_S = 10.0
#: errors of flock() that mean "not supported here" (not "held by another process")
_NO_FLOCK = frozenset({errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL})
KINDS = ("auto", "flock", "file")


class RunLockedError(PrismError):
    """Another process is writing the run folder."""


class _Held:
    """A lock held by this process: its descriptor (flock) or heartbeat (file), and how many holders."""

    def __init__(self, kind: str, fd: int | None, token: str | None) -> None:
        self.kind, self.fd, self.token = kind, fd, token
        self.count = 1
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None


_HELD: dict[str, _Held] = {}  # real path of the lock file -> what this process holds


def _describe(info: dict[str, Any]) -> str:
    try:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(info["started"])))
        return f"pid {int(info['pid'])} on {info['host']}, since {since}"
    except (ValueError, KeyError, TypeError):
        return "a process that has not written its name yet"


def _holder(fd: int) -> str:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        return _describe(json.loads(os.read(fd, 4096).decode() or "{}"))
    except (OSError, ValueError):
        return "a process that has not written its name yet"


def _info(kind: str, token: str | None = None) -> bytes:
    info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(), "kind": kind}
    if token is not None:
        info["token"] = token
    return json.dumps(info).encode()


def _requested_kind() -> str:
    kind = os.environ.get("PRISM_RUN_LOCK", "auto").strip().lower() or "auto"
    if kind not in KINDS:
        raise ConfigError(f"PRISM_RUN_LOCK: one of {', '.join(KINDS)}, got {kind!r}")
    return kind


def _refused(run_dir: Path, holder: str) -> RunLockedError:
    return RunLockedError(f"{run_dir}: another prism-train ({holder}) is writing this run folder; wait for it to "
                          "finish or stop it (a lock left by a dead process is taken over automatically)")


class RunLock:
    """Exclusive lock of a run folder for one training process.

    Args:
        run_dir: the run folder (created if needed).

    Attributes:
        kind: ``"flock"`` or ``"file"`` once acquired (see the module docstring), None before.

    Raises:
        RunLockedError: on :meth:`acquire`, when another live process holds the folder.
        StorageError: the folder or its lock file cannot be created (read-only, no permission).
        ConfigError: ``PRISM_RUN_LOCK`` is not one of auto, flock, file.
    """

    def __init__(self, run_dir: str | os.PathLike[str]) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self.kind: str | None = None
        self._key: str | None = None

    def acquire(self) -> RunLock:
        requested = _requested_kind()
        ensure_folder(self.run_dir)
        key = os.path.realpath(self.path)
        if key in _HELD:
            _HELD[key].count += 1
            self._key, self.kind = key, _HELD[key].kind
            return self
        held = None
        if requested in ("auto", "flock"):
            held = self._flock(forced=requested == "flock")
        if held is None:
            held = self._exclusive_file()
        _HELD[key] = held
        self._key, self.kind = key, held.kind
        return self

    # ---- flock -------------------------------------------------------------------------------------------------
    def _flock(self, forced: bool) -> _Held | None:
        """Hold the flock (None: flock is not supported on this file system and ``forced`` is off)."""
        existed = self.path.exists()
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as exc:
            raise storage_error(self.path, exc, "cannot create the run lock") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise _refused(self.run_dir, holder) from None
        except OSError as exc:
            os.close(fd)
            if forced or exc.errno not in _NO_FLOCK:
                raise storage_error(self.path, exc, "cannot lock the run folder (flock)") from None
            if not existed:  # the empty file just created here would look like a lock being written
                self.path.unlink(missing_ok=True)
            logger.warning("%s: flock is not supported here (%s); using a lock file instead (stale after %.0f s "
                           "without a heartbeat; set PRISM_RUN_LOCK=file on every host sharing this folder)",
                           self.path, os.strerror(exc.errno or 0), STALE_AFTER_S)
            return None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, _info("flock"), 0)
        except OSError as exc:
            os.close(fd)
            raise storage_error(self.path, exc, "cannot write the run lock") from None
        logger.debug("%s: run folder locked with flock", self.run_dir)
        return _Held("flock", fd, None)

    # ---- lock file ---------------------------------------------------------------------------------------------
    def _exclusive_file(self) -> _Held:
        """Create the lock file exclusively, taking over a stale one (at most a few attempts: each either
        creates it, or finds a live holder, or moves a stale one away)."""
        token = secrets.token_hex(8)
        for _ in range(5):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            except FileExistsError:
                self._take_over_if_stale()
                continue
            except OSError as exc:
                raise storage_error(self.path, exc, "cannot create the run lock") from None
            try:
                os.write(fd, _info("file", token))
                os.fsync(fd)
            except OSError as exc:
                os.close(fd)
                self.path.unlink(missing_ok=True)
                raise storage_error(self.path, exc, "cannot write the run lock") from None
            os.close(fd)
            held = _Held("file", None, token)
            held.thread = threading.Thread(target=_heartbeat, args=(self.path, held), daemon=True,
                                           name="prism-run-lock")
            held.thread.start()
            logger.debug("%s: run folder locked with the lock file %s", self.run_dir, self.path)
            return held
        raise _refused(self.run_dir, "a process that keeps re-creating the lock file")

    def _take_over_if_stale(self) -> None:
        """Raise RunLockedError naming a live holder; move a stale lock file out of the way."""
        try:
            text = self.path.read_text(encoding="utf-8", errors="replace")
            age = time.time() - self.path.stat().st_mtime
        except FileNotFoundError:
            return  # released meanwhile: try again
        except OSError as exc:
            raise storage_error(self.path, exc, "cannot read the run lock") from None
        reason = stale_reason(text, age)
        if reason is None:
            try:
                info = json.loads(text)
            except ValueError:
                info = {}
            raise _refused(self.run_dir, _describe(info))
        aside = self.path.with_name(f"{LOCK_NAME}.stale-{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return  # another process took it over first
        if aside.read_text(encoding="utf-8", errors="replace") != text:  # moved a fresh lock: put it back
            try:
                os.link(aside, self.path)
            except OSError:
                pass
            aside.unlink(missing_ok=True)
            raise _refused(self.run_dir, "another process that has just taken the folder over")
        aside.unlink(missing_ok=True)
        logger.warning("%s: took over a stale lock (%s)", self.run_dir, reason)

    # ---- release -----------------------------------------------------------------------------------------------
    def release(self) -> None:
        """Give the folder up: flock's file stays, emptied; the lock file is removed. Safe to call twice."""
        key, self._key = self._key, None
        if key is None or key not in _HELD:
            return
        held = _HELD[key]
        if held.count > 1:
            held.count -= 1
            return
        del _HELD[key]
        if held.kind == "flock":
            assert held.fd is not None
            try:
                os.ftruncate(held.fd, 0)
            except OSError:
                pass
            os.close(held.fd)  # closing the descriptor releases the flock
            return
        held.stop.set()
        if held.thread is not None:
            held.thread.join()
        try:
            if json.loads(self.path.read_text(encoding="utf-8")).get("token") == held.token:
                self.path.unlink()
        except (OSError, ValueError):
            pass

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def stale_reason(text: str, age_s: float) -> str | None:
    """Why a lock file with content ``text``, last touched ``age_s`` seconds ago, is stale (None: it is live).

    The rule any host can apply: the holder's process is dead (same host only); or the file was not touched for
    :data:`STALE_AFTER_S` seconds (its holder's heartbeat stopped: killed, or its host is down); an empty or
    unreadable file is stale after :data:`EMPTY_STALE_S` seconds.
    """
    try:
        info = json.loads(text) if text.strip() else None
    except ValueError:
        info = None
    if not isinstance(info, dict):
        return f"an empty lock file, {age_s:.0f} s old" if age_s >= EMPTY_STALE_S else None
    host, pid = info.get("host"), info.get("pid")
    if host == socket.gethostname() and isinstance(pid, int) and not pid_alive(pid):
        return f"pid {pid} on {host} is dead"
    if age_s >= STALE_AFTER_S:
        return f"not touched for {age_s:.0f} s by {_describe(info)}"
    return None


def _heartbeat(path: Path, held: _Held) -> None:
    """Touch the lock file every HEARTBEAT_S seconds while held (its mtime tells other hosts it is alive)."""
    while not held.stop.wait(HEARTBEAT_S):
        try:
            os.utime(path)
        except OSError as exc:
            logger.error("%s: cannot refresh the run lock (%s); another host may take the folder over after "
                         "%.0f s", path, os.strerror(exc.errno or 0), STALE_AFTER_S)
