"""The one way prism writes a file: a temporary file beside the target, synced, renamed over it.

A kill at any moment leaves the old file or the new one, never half of one. The temporary file is created with
the permissions the umask gives (as ``open`` would: 0644 under the usual umask 022), so a written file has the
same mode whichever writer made it. Its name carries the writer's host and process id,
``.<name>.tmp-<host>-<pid>-<token><suffix>``, so :func:`remove_stale_temporaries` deletes only files whose writer
is dead. A failed write (no space, read-only file system, no permission) leaves the previous file as it was,
removes the temporary file and raises :class:`StorageError`: one line naming the path and the cause.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import secrets
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import PrismError


class StorageError(PrismError):
    """A file could not be written (disk full, read-only, no permission); the message names the path and cause."""


_CAUSES = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.ENOENT: "folder does not exist",
    errno.ENOTDIR: "a part of the path is not a folder",
    errno.EISDIR: "is a folder",
    errno.EFBIG: "file too large for the file system",
    errno.EIO: "input/output error",
}
_ERRNO_IN_TEXT = re.compile(r"errno\s*=\s*(\d+)")


def os_error_cause(exc: BaseException) -> str:
    """A short cause for a failed write: ``no space left on the device``, ``read-only file system``, ...

    Understands ``OSError`` and the ``RuntimeError``/``OSError`` texts of HDF5 that embed ``errno = N``."""
    code = getattr(exc, "errno", None)
    if not isinstance(code, int) or code not in _CAUSES:
        match = _ERRNO_IN_TEXT.search(str(exc))
        code = int(match.group(1)) if match else code
    if isinstance(code, int) and code in _CAUSES:
        return _CAUSES[code]
    text = getattr(exc, "strerror", None) or " ".join(str(exc).split()) or type(exc).__name__
    return str(text)[:160]


_STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG,
                             errno.EIO})


def storage_cause(exc: BaseException) -> str | None:
    """The cause when ``exc`` is a storage fault (full, read-only, no permission, I/O error), else None.

    HDF5 reports these as ``OSError`` or ``RuntimeError`` with ``errno = N`` in the text."""
    if not isinstance(exc, OSError | RuntimeError):
        return None
    inner = exc.__cause__ or exc.__context__  # torch.save hides the OSError behind a RuntimeError
    if isinstance(inner, OSError | RuntimeError) and inner is not exc:
        cause = storage_cause(inner)
        if cause is not None:
            return cause
    code = getattr(exc, "errno", None)
    if not isinstance(code, int) or code not in _STORAGE_ERRNOS:
        match = _ERRNO_IN_TEXT.search(str(exc))
        code = int(match.group(1)) if match else None
    return _CAUSES[code] if code in _STORAGE_ERRNOS else None


def storage_error(path: str | os.PathLike[str], exc: BaseException, action: str = "cannot write") -> StorageError:
    """The one-line :class:`StorageError` for ``exc`` raised while writing ``path``."""
    return StorageError(f"{path}: {action}: {os_error_cause(exc)}")


def host_tag() -> str:
    """Eight hex digits naming this host (temporary files and locks of other hosts are never judged stale)."""
    return hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]


_TEMP = re.compile(r"^\.(?P<target>.+)\.tmp-(?P<host>[0-9a-f]{8})-(?P<pid>\d+)-(?P<token>[0-9a-f]+)(?P<suffix>.*)$")


def temp_path(path: str | os.PathLike[str], suffix: str = "") -> Path:
    """A fresh temporary name beside ``path`` carrying this host and process (``suffix`` e.g. ``.nii.gz``)."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{host_tag()}-{os.getpid()}-{secrets.token_hex(4)}{suffix}")


def is_temporary(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is named like a temporary file of :func:`temp_path`."""
    return _TEMP.match(Path(path).name) is not None


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host (a process of another user counts as alive)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(folder: str | os.PathLike[str], target: str | None = None) -> list[Path]:
    """Delete temporary files in ``folder`` (of ``target`` only, when given) whose writer, on this host, is dead.

    Returns the removed paths. Files of live writers and of other hosts are left alone."""
    removed = []
    here = host_tag()
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return removed
    for p in entries:
        m = _TEMP.match(p.name)
        if m is None or (target is not None and m.group("target") != target):
            continue
        if m.group("host") != here or pid_alive(int(m.group("pid"))):
            continue
        try:
            p.unlink()
            removed.append(p)
        except FileNotFoundError:
            pass
        except OSError:  # read-only folder: nothing to clean, nothing lost
            pass
    return removed


def fsync_dir(folder: str | os.PathLike[str]) -> None:
    """Sync a folder so a rename in it survives a crash (no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _create(tmp: Path) -> None:
    """Create ``tmp`` empty with mode 0666 minus the umask (what ``open(..., "w")`` gives)."""
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


@contextmanager
def atomic_path(path: str | os.PathLike[str], *, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write; on success it is synced and renamed over ``path``.

    The temporary file exists (empty, umask permissions) when the body starts; the body may truncate or replace
    it (``h5py.File(tmp, "w")``, ``torch.save``, ``nib.save``). On any exception it is removed and ``path`` is
    left untouched; an ``OSError`` becomes a one-line :class:`StorageError` naming ``path``.

    Args:
        path: the file to write.
        suffix: appended to the temporary name, for writers that choose the format by extension.

    Raises:
        StorageError: the folder is missing, read-only or full, or the write failed for another OS reason.
    """
    path = Path(path)
    tmp = temp_path(path, suffix)
    try:
        _create(tmp)
    except OSError as exc:
        raise storage_error(path, exc) from None
    try:
        yield tmp
        _fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException as exc:
        _unlink_quietly(tmp)
        cause = storage_cause(exc)
        if cause is not None:
            raise StorageError(f"{path}: cannot write: {cause}") from None
        if isinstance(exc, OSError):
            raise storage_error(path, exc) from None
        raise
    fsync_dir(path.parent)


def _unlink_quietly(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass


def write_atomic(path: str | os.PathLike[str], write: Callable[[Path], object], *, suffix: str = "") -> Path:
    """Call ``write(tmp)`` on a temporary path beside ``path``, sync it, and rename it over ``path``.

    Args:
        path: the file to write.
        write: writes the whole content to the path it is given.
        suffix: appended to the temporary name (e.g. ``.png`` for writers that choose the format by extension).

    Returns:
        ``path``.

    Raises:
        StorageError: see :func:`atomic_path`.
    """
    with atomic_path(path, suffix=suffix) as tmp:
        write(tmp)
    return Path(path)


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically (see :func:`write_atomic`)."""
    return write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`write_atomic`)."""
    return write_atomic(path, lambda tmp: tmp.write_bytes(data))


_UNSAFE_TO_FINALIZE = False


def mark_unsafe_to_finalize() -> None:
    """Record that a native library (HDF5 after a failed write on a full disk) is left in a state where the
    interpreter's normal shutdown would crash it; :func:`prism.cli.common.run_command` then exits directly."""
    global _UNSAFE_TO_FINALIZE
    _UNSAFE_TO_FINALIZE = True


def unsafe_to_finalize() -> bool:
    """Whether :func:`mark_unsafe_to_finalize` was called in this process."""
    return _UNSAFE_TO_FINALIZE


def ensure_folder(folder: str | os.PathLike[str]) -> Path:
    """``mkdir -p`` with a one-line :class:`StorageError` (read-only parent, no permission, a file in the way)."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise StorageError(f"{folder}: cannot create the folder: a file of that name exists") from None
    except OSError as exc:
        raise storage_error(folder, exc, "cannot create the folder") from None
    return folder
