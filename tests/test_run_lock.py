"""The run-folder lock where flock does not work (NFS mounted nolock, some FUSE mounts): an O_EXCL lock file
naming host, pid and a token, touched while held, with a stale rule any host can apply; flock where it works.

The no-flock case is simulated by making ``flock`` fail with ENOLCK (what NFS without a lock manager returns);
a second writer is a separate process forced onto the lock file (``PRISM_RUN_LOCK=file``).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
import subprocess
import sys
import time

import pytest

from prism.engine import run_lock
from prism.engine.run_lock import LOCK_NAME, RunLock, RunLockedError, stale_reason
from prism.errors import ConfigError

SECOND_WRITER = """
import sys
from prism.engine.run_lock import RunLock, RunLockedError
try:
    RunLock(sys.argv[1]).acquire()
except RunLockedError as exc:
    print(exc)
    raise SystemExit(3)
print("acquired")
"""


@pytest.fixture
def no_flock(monkeypatch):
    """flock fails as on an NFS mount without a lock manager."""
    def fail(fd, op):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(run_lock.fcntl, "flock", fail)


def _second_writer(run) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", SECOND_WRITER, str(run)], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PRISM_RUN_LOCK": "file"})


def test_flock_is_used_where_it_works(tmp_path):
    lock = RunLock(tmp_path / "run").acquire()
    try:
        assert lock.kind == "flock"
        assert json.loads((tmp_path / "run" / LOCK_NAME).read_text())["kind"] == "flock"
    finally:
        lock.release()
    assert (tmp_path / "run" / LOCK_NAME).read_text() == ""  # flock's file stays, emptied


@pytest.mark.slow
def test_without_flock_a_lock_file_holds_the_folder_and_refuses_a_second_writer(tmp_path, no_flock, caplog):
    run = tmp_path / "run"
    with caplog.at_level(logging.WARNING, logger="prism.engine.run_lock"):
        lock = RunLock(run).acquire()
    try:
        assert lock.kind == "file"
        assert "flock is not supported here" in caplog.text and "using a lock file" in caplog.text
        info = json.loads((run / LOCK_NAME).read_text())
        assert info["kind"] == "file" and info["pid"] == os.getpid() and info["host"] == socket.gethostname()
        second = _second_writer(run)
        assert second.returncode == 3, second.stderr[-2000:]
        assert f"another prism-train (pid {os.getpid()} on {socket.gethostname()}" in second.stdout
    finally:
        lock.release()
    assert not (run / LOCK_NAME).exists()  # the lock file is the lock: released means removed
    assert _second_writer(run).stdout.strip() == "acquired"


@pytest.mark.slow
def test_a_lock_file_of_a_dead_process_on_this_host_is_taken_over(tmp_path, no_flock):
    run = tmp_path / "run"
    run.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (run / LOCK_NAME).write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "started": 0,
                                             "kind": "file", "token": "old"}))
    lock = RunLock(run).acquire()
    try:
        assert json.loads((run / LOCK_NAME).read_text())["pid"] == os.getpid()
        assert [p.name for p in run.iterdir()] == [LOCK_NAME]  # the stale file moved aside was removed
    finally:
        lock.release()


def test_another_hosts_lock_is_live_while_touched_and_stale_once_its_heartbeat_stops(tmp_path, no_flock):
    run = tmp_path / "run"
    run.mkdir()
    other = {"pid": 4242, "host": "node-17.cluster", "started": time.time(), "kind": "file", "token": "theirs"}
    (run / LOCK_NAME).write_text(json.dumps(other))
    with pytest.raises(RunLockedError, match=r"another prism-train \(pid 4242 on node-17\.cluster, since "):
        RunLock(run).acquire()
    old = time.time() - run_lock.STALE_AFTER_S - 5
    os.utime(run / LOCK_NAME, (old, old))  # no heartbeat for longer than the stale limit
    lock = RunLock(run).acquire()
    try:
        assert json.loads((run / LOCK_NAME).read_text())["host"] == socket.gethostname()
    finally:
        lock.release()


def test_the_holder_touches_its_lock_file(tmp_path, no_flock, monkeypatch):
    monkeypatch.setattr(run_lock, "HEARTBEAT_S", 0.05)
    run = tmp_path / "run"
    lock = RunLock(run).acquire()
    try:
        old = time.time() - 100
        os.utime(run / LOCK_NAME, (old, old))
        deadline = time.time() + 10
        while time.time() < deadline and time.time() - (run / LOCK_NAME).stat().st_mtime > 50:
            time.sleep(0.02)
        assert time.time() - (run / LOCK_NAME).stat().st_mtime < 50
    finally:
        lock.release()


@pytest.mark.parametrize(("text", "age", "stale"), [
    ("", 1.0, False),  # being written: its creator has not filled it in yet
    ("", run_lock.EMPTY_STALE_S + 1, True),  # flock's emptied leftover
    (json.dumps({"pid": 1, "host": "elsewhere", "started": 0}), 10.0, False),
    (json.dumps({"pid": 1, "host": "elsewhere", "started": 0}), run_lock.STALE_AFTER_S + 1, True),
    (json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": 0}), 10.0, False),  # alive here
    ("{not json", run_lock.EMPTY_STALE_S + 1, True),
])
def test_the_stale_rule(text, age, stale):
    assert (stale_reason(text, age) is not None) == stale


def test_an_unknown_lock_kind_is_a_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PRISM_RUN_LOCK", "nfs")
    with pytest.raises(ConfigError, match=r"PRISM_RUN_LOCK: one of auto, flock, file, got 'nfs'"):
        RunLock(tmp_path / "run").acquire()
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_a_trainer_runs_under_the_lock_file(tmp_path, tiny_cache, no_flock):
    from conftest import fast_config
    from prism.engine.trainer import Trainer

    trainer = Trainer(fast_config("train.steps=1", "train.loggers=[csv]", cache=tiny_cache), tmp_path / "run",
                      cache_path=tiny_cache)
    try:
        assert trainer.lock is not None and trainer.lock.kind == "file"
        trainer.fit()
    finally:
        trainer.close()
    assert not (tmp_path / "run" / LOCK_NAME).exists() and (tmp_path / "run" / "last.pt").is_file()
