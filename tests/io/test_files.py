from __future__ import annotations

import os

import pytest

from glomseg.io._files import atomic_path, write_bytes_atomic


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
