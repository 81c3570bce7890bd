from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

import glomseg.io._files as files_module
from glomseg.io._files import (
    atomic_path,
    partial_path,
    remove_stale_partials,
    remove_stale_partials_in,
    write_bytes_atomic,
)

#: Where Linux states a process's umask.
STATUS = "/proc/self/status"


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "data.bin"
    target.write_bytes(b"old")
    os.chmod(target, 0o640)

    def fill_the_disk() -> None:
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise OSError(28, "disk full")

    with pytest.raises(OSError, match="disk full"):
        fill_the_disk()
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["data.bin"]
    write_bytes_atomic(target, b"new")
    assert target.read_bytes() == b"new"
    assert target.stat().st_mode & 0o777 == 0o640


def test_new_file_gets_the_usual_permissions(tmp_path):
    umask = os.umask(0o022)
    try:
        write_bytes_atomic(tmp_path / "x", b"1")
    finally:
        os.umask(umask)
    assert (tmp_path / "x").stat().st_mode & 0o777 == 0o644


def test_a_read_only_file_is_replaced_and_stays_read_only(tmp_path, monkeypatch):
    target = tmp_path / "frozen.json"
    target.write_bytes(b"old")
    os.chmod(target, 0o444)
    modes = []
    fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        modes.append(os.fstat(fd).st_mode & 0o777)
        fsync(fd)

    monkeypatch.setattr(files_module.os, "fsync", recording_fsync)
    write_bytes_atomic(target, b"new")
    # Synced while its owner may still open it for writing (root may anyway: the mode is
    # what a non-root user's write depends on), and given the target's mode after.
    assert modes == [0o600]
    assert target.read_bytes() == b"new"
    assert target.stat().st_mode & 0o777 == 0o444


@pytest.mark.skipif(not os.path.isfile(STATUS), reason="reads /proc (Linux)")
def test_writers_never_set_the_umask_to_learn_it(tmp_path, monkeypatch):
    def no_umask(mask: int) -> int:
        raise AssertionError("os.umask changes the umask of every thread while it is read")

    monkeypatch.setattr(files_module.os, "umask", no_umask)
    with open(STATUS, encoding="ascii") as status:
        umask = int(next(line for line in status if line.startswith("Umask:")).split()[1], 8)
    write_bytes_atomic(tmp_path / "new", b"x")
    assert (tmp_path / "new").stat().st_mode & 0o777 == 0o666 & ~umask


def _ended_pid() -> int:
    """The id of a process that has ended (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_stale_temporaries_of_ended_processes_are_removed(tmp_path):
    target = tmp_path / "out.csv"
    host = socket.gethostname()
    dead, alive = _ended_pid(), os.getppid()
    stale_file = tmp_path / f".out.csv.{host}-{dead}.0123abcd.partial"
    stale_dir = tmp_path / f".out.csv.{host}-{dead}.4567abcd.partial"
    kept = [
        tmp_path / f".out.csv.{host}-{alive}.89abcdef.partial",  # a live writer's
        tmp_path / f".out.csv.other-host-{dead}.89abcdef.partial",  # another host's
        tmp_path / f".other.csv.{host}-{dead}.89abcdef.partial",  # another target's
        tmp_path / ".out.csv.notes.partial",  # not a name glomseg makes
    ]
    stale_file.write_bytes(b"half")
    stale_dir.mkdir()
    (stale_dir / "chunk").write_bytes(b"half")
    for path in kept:
        path.write_bytes(b"")
    assert sorted(remove_stale_partials(target)) == sorted([stale_file, stale_dir])
    assert sorted(tmp_path.iterdir()) == sorted(kept)
    # a write with clean=True does the same; without, it lists nothing
    stale_file.write_bytes(b"half")
    write_bytes_atomic(target, b"1")
    assert stale_file.exists()
    write_bytes_atomic(target, b"2", clean=True)
    assert not stale_file.exists()
    # remove_stale_partials_in: every target of a folder at once
    assert remove_stale_partials_in(tmp_path) == [
        tmp_path / f".other.csv.{host}-{dead}.89abcdef.partial"
    ]


def test_temporary_names_carry_host_and_process(tmp_path):
    name = partial_path(tmp_path / "a.b").name
    assert name.startswith(f".a.b.{socket.gethostname()}-{os.getpid()}.")
    assert name.endswith(".partial")
    assert partial_path(tmp_path / "a.b") != partial_path(tmp_path / "a.b")
