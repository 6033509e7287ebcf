"""Storage faults: a full disk (a small tmpfs), a read-only folder, umask permissions, stale temporary files.

Each failed write is one line naming the path and the cause, the previous file survives, no temporary file is
left. The tmpfs tests mount a file system and are skipped where that is not allowed (not root, containers).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import FAST
from prism.atomic import (
    StorageError,
    is_temporary,
    remove_stale_temporaries,
    temp_path,
    write_atomic,
    write_text_atomic,
)
from prism.cli.train import main as train_main
from prism.engine.checkpoint import load_checkpoint
from prism.engine.trainer import CHECKPOINT_NAME

TRAIN = ["--no-eval", *FAST, "train.steps=6", "train.checkpoint_every=3", "train.loggers=[csv]"]


def _mount(point: Path, options: str) -> None:
    point.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")


@pytest.fixture
def small_disk(tmp_path):
    """``mount(size)`` -> a fresh tmpfs of that size; ``remount_ro()`` makes it read-only."""
    point = tmp_path / "mnt"

    class Disk:
        path = point

        def mount(self, size: str) -> Path:
            _mount(point, f"size={size}")
            return point

        def remount_ro(self) -> None:
            subprocess.run(["mount", "-o", "remount,ro", str(point)], check=True)

    yield Disk()
    subprocess.run(["umount", "-l", str(point)], capture_output=True)  # lazy: a still-open file cannot block it


def _temporaries(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if ".tmp-" in p.name]


def test_written_files_get_the_umask_permissions(tmp_path):
    old = os.umask(0o027)
    try:
        write_text_atomic(tmp_path / "a.txt", "x")
    finally:
        os.umask(old)
    write_text_atomic(tmp_path / "b.txt", "y")
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o640
    assert (tmp_path / "b.txt").stat().st_mode & 0o777 == 0o666 & ~old


def test_failed_write_keeps_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "report.json"
    target.write_text("old")

    def broken(tmp: Path) -> None:
        tmp.write_text("half")
        raise OSError(28, "No space left on device")

    with pytest.raises(StorageError, match=r"report\.json: cannot write: no space left on the device"):
        write_atomic(target, broken)
    assert target.read_text() == "old" and _temporaries(tmp_path) == []
    with pytest.raises(StorageError, match="folder does not exist"):
        write_text_atomic(tmp_path / "missing" / "x.txt", "x")


@pytest.mark.slow
def test_stale_temporaries_only_of_dead_writers(tmp_path):
    mine = temp_path(tmp_path / "last.pt")
    mine.write_bytes(b"")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = Path(str(mine).replace(f"-{os.getpid()}-", f"-{dead.pid}-"))
    stale.write_bytes(b"")
    assert is_temporary(mine) and is_temporary(stale) and not is_temporary(tmp_path / "last.pt")
    assert remove_stale_temporaries(tmp_path) == [stale]
    assert mine.exists()


@pytest.mark.slow
def test_full_disk_during_a_checkpoint_is_one_line_and_keeps_the_last_one(tiny_cache, small_disk, capsys):
    disk = small_disk.mount("1200k")  # run files and one ~0.8 MB checkpoint fit; a second beside it does not
    run = disk / "run"
    code = train_main(["--data", str(tiny_cache), "-o", str(run), *TRAIN])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert f"{run / CHECKPOINT_NAME}: cannot write: no space left on the device" in err[0]
    assert load_checkpoint(run / CHECKPOINT_NAME)["step"] == 3  # the previous checkpoint survives
    assert _temporaries(disk) == []


@pytest.mark.slow
def test_read_only_run_folder_is_one_line(tiny_cache, small_disk, capsys):
    disk = small_disk.mount("8m")
    run = disk / "run"
    assert train_main(["--data", str(tiny_cache), "-o", str(run), *TRAIN]) == 0
    before = {p.name: p.stat().st_mtime_ns for p in run.iterdir()}
    small_disk.remount_ro()
    capsys.readouterr()
    assert train_main(["--resume", str(run), "--no-eval", "train.steps=9"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(run) in err[0] and "read-only file system" in err[0], err
    assert train_main(["--data", str(tiny_cache), "-o", str(disk / "new"), *TRAIN]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{disk / 'new'}: cannot create the folder: read-only file system" in err[0], err
    assert {p.name: p.stat().st_mtime_ns for p in run.iterdir()} == before


@pytest.mark.slow
def test_synth_on_a_full_disk_is_one_line_keeps_the_old_cache_and_never_crashes(small_disk):
    disk = small_disk.mount("1500k")
    old = disk / "x.h5"
    old.write_bytes(b"the previous cache")
    done = subprocess.run([sys.executable, "-m", "prism.cli.data", "synth", "-o", str(old), "--cases", "8",
                           "--shape", "32", "32", "32"], capture_output=True, text=True, timeout=300)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr[-2000:]  # not 139 (segfault)
    assert len(lines) == 1 and f"{old}: cannot write the cache: no space left on the device" in lines[0]
    assert old.read_bytes() == b"the previous cache"
    assert _temporaries(disk) == []


_RACE = """
import sys
from prism.data.cache_writer import CacheWriter
CacheWriter._check_space = lambda self, *a: None  # as if another process filled the disk after the check
from prism.cli.data import main
sys.exit(main(["synth", "-o", sys.argv[1], "--cases", "8", "--shape", "32", "32", "32"]))
"""


@pytest.mark.slow
@pytest.mark.parametrize("size", ["400k", "1100k"])
def test_disk_filling_during_an_hdf5_write_is_still_one_line_and_no_crash(small_disk, size):
    disk = small_disk.mount(size)
    done = subprocess.run([sys.executable, "-c", _RACE, str(disk / "x.h5")], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 2, done.stderr[-3000:]  # HDF5 left half-closed must not crash the interpreter (139)
    assert done.stderr.strip().splitlines() == [
        f"prism-data: error: {disk / 'x.h5'}: cannot write the cache: no space left on the device"]
    assert list(disk.iterdir()) == []


@pytest.mark.slow
def test_a_new_cache_build_removes_only_dead_builders_temporaries(tmp_path):
    from prism.cli.data import main as data_main

    out = tmp_path / "s.h5"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    live = temp_path(out)
    live.write_bytes(b"a build in progress")
    stale = Path(str(live).replace(f"-{os.getpid()}-", f"-{dead.pid}-"))
    stale.write_bytes(b"left by a killed synth")
    assert data_main(["synth", "-o", str(out), "--cases", "2", "--shape", "8", "8", "8"]) == 0
    assert out.is_file() and live.exists() and not stale.exists()


@pytest.mark.slow
def test_full_disk_while_writing_the_evaluation_report_is_one_line(tiny_cache, small_disk, capsys):
    from prism.cli.evaluate import main as eval_main

    disk = small_disk.mount("4m")
    run = disk / "run"
    assert train_main(["--data", str(tiny_cache), "-o", str(run), *TRAIN]) == 0
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)  # fill the disk to the last block
    try:
        while os.write(fd, b"\0" * 4096):
            pass
    except OSError:
        pass
    finally:
        os.close(fd)
    before = sorted(p.name for p in run.iterdir())
    capsys.readouterr()
    assert eval_main([str(run), "--max-cases", "1", "--no-hd95", "--no-heatmap"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert all(line.startswith("evaluate: ") for line in err[:-1]), err  # progress, then the one error line
    assert f"prism-eval: error: {run / 'eval.json'}: cannot write: no space left on the device" == err[-1]
    assert sorted(p.name for p in run.iterdir()) == before and _temporaries(disk) == []


def _lock_folder(folder: Path, locked: bool) -> None:
    """Make ``folder`` unwritable (chmod; for root, which writes through permissions, the immutable attribute)."""
    if os.geteuid() != 0:
        folder.chmod(0o555 if locked else 0o755)
        return
    done = subprocess.run(["chattr", "+i" if locked else "-i", str(folder)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot make a folder unwritable for root here: {done.stderr.decode().strip()}")


@pytest.mark.slow
def test_folder_without_write_permission_is_one_line(tiny_cache, tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    _lock_folder(locked, True)
    try:
        code = train_main(["--data", str(tiny_cache), "-o", str(locked / "run"), *TRAIN])
    finally:
        _lock_folder(locked, False)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert f"{locked / 'run'}: cannot create the folder: permission denied" in err[0], err
    assert list(locked.iterdir()) == []
