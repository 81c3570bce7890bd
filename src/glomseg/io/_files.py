"""Atomic file writes: a crash or a full disk never leaves a half-written file.

Everything glomseg writes goes to a temporary file beside its target, which is
flushed to disk and then renamed over the target (an atomic step on POSIX and
Windows). On any error the temporary file is removed and the target, if it
existed, is untouched.

A process killed mid-write (``SIGKILL``, a power cut) cannot remove its
temporary file, so temporary names carry their writer's host and process id
(``.<name>.<host>-<pid>.<random>.partial``): the next write of the same target
removes those whose process on this host has ended.
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = [
    "atomic_path",
    "partial_path",
    "remove_stale_partials",
    "remove_stale_partials_in",
    "write_bytes_atomic",
]

_PARTIAL = ".partial"


def partial_path(target: Path) -> Path:
    """A new temporary path beside ``target``, named after it and this process."""
    owner = f"{socket.gethostname()}-{os.getpid()}"
    return target.with_name(f".{target.name}.{owner}.{uuid.uuid4().hex[:8]}{_PARTIAL}")


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _stale(name: str, head: str, host: str) -> bool:
    """Whether ``name``, starting with ``head``, is a temporary name of an ended process.

    That is, :func:`partial_path` made it on ``host`` for a process no longer running.
    """
    if not (name.startswith(head) and name.endswith(_PARTIAL) and len(name) > len(head)):
        return False
    stem, _, _random = name[: -len(_PARTIAL)].rpartition(".")
    before, _, pid = stem.rpartition("-")
    return before.endswith(f".{host}") and pid.isdigit() and not _alive(int(pid))


def _remove_stale(folder: Path, head: str) -> list[Path]:
    host = socket.gethostname()
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return []
    removed = []
    for entry in entries:
        if not _stale(entry.name, head, host):
            continue
        path = Path(entry.path)
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def remove_stale_partials(target: Path) -> list[Path]:
    """Remove the temporary files (or folders) of ``target`` left by ended processes of this host.

    Returns the paths removed. Those of live processes, of other hosts and of
    names this module did not make are kept.
    """
    return _remove_stale(target.parent, f".{target.name}.")


def remove_stale_partials_in(folder: Path) -> list[Path]:
    """:func:`remove_stale_partials` for every target in ``folder``, in one listing."""
    return _remove_stale(folder, ".")


_UMASK_LOCK = threading.Lock()


def _default_mode() -> int:
    """The mode of a new file: ``0o666`` less the process's umask."""
    try:  # Linux states it; reading it changes nothing
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    with _UMASK_LOCK:  # elsewhere it is read by setting it: never two threads at once
        umask = os.umask(0o077)
        os.umask(umask)
    return 0o666 & ~umask


@contextmanager
def atomic_path(path: str | os.PathLike[str], *, clean: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path``.

    The replaced file keeps the permissions of the file it replaces (or the
    usual ones for a new file). On an exception the temporary file is removed.
    With ``clean=True``, temporary files of ``path`` that killed processes left
    are removed first (:func:`remove_stale_partials`; it lists the folder, so
    writers of many small files in one folder leave it off).

    Examples
    --------
    >>> target = getfixture("tmp_path") / "out.txt"
    >>> with atomic_path(target) as tmp:
    ...     _ = tmp.write_text("done")
    >>> target.read_text(), sorted(p.name for p in target.parent.iterdir())
    ('done', ['out.txt'])
    """
    target = Path(path)
    if clean:
        remove_stale_partials(target)
    tmp = partial_path(target)
    try:
        tmp.touch(mode=0o600, exist_ok=False)
        yield tmp
        with tmp.open("rb+") as handle:  # before the mode, which may forbid opening it
            os.fsync(handle.fileno())
        mode = target.stat().st_mode & 0o777 if target.exists() else _default_mode()
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes, *, clean: bool = False) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_path`)."""
    with atomic_path(path, clean=clean) as tmp:
        tmp.write_bytes(data)
