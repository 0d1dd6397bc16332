"""The store lock: one build writes a store at a time.

``STORE/.geoplant-build.lock`` is created with ``O_CREAT | O_EXCL`` and holds the writer's
pid, host and start time; the writer also keeps it ``flock``-ed. A stale lock (its holder is
gone) is taken over; a live one, or one from another host, stops the second build with one line
naming the holder.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

from geoplant.builder.storefiles import read_json_dict
from geoplant.errors import GeoplantError
from geoplant.files import pid_alive

__all__ = ["LOCK_NAME", "acquire_lock", "release_lock", "store_lock"]

#: The lock file a build holds inside the store.
LOCK_NAME: Final = ".geoplant-build.lock"
#: A lock file still empty after this long was left by a writer killed while creating it.
_EMPTY_LOCK_GRACE_S: Final = 10.0


def _lock_busy(path: Path, holder: dict[str, Any] | None) -> GeoplantError:
    """The one-line error a second writer gets."""
    if holder is None:
        who, stop = "another build", "stop it"
    else:
        who = f"another build (pid {holder.get('pid')} on {holder.get('host')}, since " \
              f"{holder.get('started')})"
        stop = f"stop it (kill {holder.get('pid')})"
    return GeoplantError(f"{who} is writing this store", path=path.parent,
                         fix=f"wait for it to finish, or {stop} and rerun to resume; if no "
                             f"build is running, delete {path}")


def _flock(fd: int) -> bool | None:
    """Try to lock ``fd`` exclusively without waiting: taken, held elsewhere, or unsupported."""
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError:  # no flock on this file system: the pid check alone decides
        return None
    return True


def _same_file(fd: int, path: Path) -> bool:
    """Whether ``path`` still names the file open as ``fd`` (not released and recreated)."""
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False


def _is_stale(holder: dict[str, Any] | None, path: Path, flocked: bool | None) -> bool:
    """Whether a lock's holder is gone.

    On this host a live holder keeps its file ``flock``-ed, so a free flock means it is gone
    even when its pid was reused (containers restart with the same pids); without flock, a
    dead pid. A lock from another host is never taken over: its pid means nothing here.
    """
    if holder is None:  # a writer killed between creating the file and filling it
        return time.time() - path.stat().st_mtime > _EMPTY_LOCK_GRACE_S
    if holder.get("host") != socket.gethostname():
        return False
    if flocked:
        return True
    pid = holder.get("pid")
    if not isinstance(pid, int):
        return True
    return not pid_alive(pid)


def _write_holder(fd: int) -> None:
    """Fill the lock file with this process's pid, host and start time."""
    content = json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                          "started": time.strftime("%Y-%m-%d %H:%M:%S %z")}).encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, content, 0)


def _take_over(path: Path) -> int | None:
    """Take a stale lock over: its fd, or ``None`` if it vanished meanwhile (try again)."""
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return None
    try:
        flocked = _flock(fd)
        # flock serialises takeovers: of two builds that find the same stale lock, one wins
        if flocked is False:
            raise _lock_busy(path, read_json_dict(path))
        if not _same_file(fd, path):
            os.close(fd)
            return None
        holder = read_json_dict(path)
        if not _is_stale(holder, path, flocked):
            raise _lock_busy(path, holder)
        _write_holder(fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.close(fd)
        raise
    return fd


def acquire_lock(store: Path) -> int:
    """Create ``STORE/.geoplant-build.lock`` (``O_CREAT | O_EXCL``) or take a stale one over.

    Returns the lock file's descriptor, ``flock``-ed where the file system allows.

    Raises
    ------
    GeoplantError
        When another build holds the lock (one line naming its pid, host and start time).
    """
    path = store / LOCK_NAME
    for _attempt in range(5):  # each retry follows a lock released under our feet
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o644)
        except FileExistsError:
            taken = _take_over(path)
            if taken is not None:
                return taken
            continue
        _flock(fd)
        _write_holder(fd)
        return fd
    raise _lock_busy(path, read_json_dict(path))


def release_lock(store: Path, fd: int) -> None:
    """Delete the lock file (if it is still ours), then close it (which drops the flock)."""
    path = store / LOCK_NAME
    with contextlib.suppress(OSError):
        if _same_file(fd, path):
            path.unlink()
    os.close(fd)


@contextlib.contextmanager
def store_lock(store: Path) -> Iterator[None]:
    """Hold the store's build lock for the ``with`` body, released on every way out."""
    fd = acquire_lock(store)
    try:
        yield
    finally:
        release_lock(store, fd)
