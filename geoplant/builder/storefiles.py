"""Files of a store: written atomically yet readable like files written in place, and the
small JSON files a build keeps its state in (the lock, the settings, markers)."""

from __future__ import annotations

import contextlib
import functools
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from geoplant.files import atomic_write_with

__all__ = ["read_json_dict", "write_store_file"]


@functools.cache
def _file_mode() -> int:
    """The mode a plain ``open(path, "w")`` gives a new file (0666 less the umask)."""
    with contextlib.suppress(OSError, ValueError, StopIteration):
        status = Path("/proc/self/status").read_text().splitlines()
        return 0o666 & ~int(next(x for x in status if x.startswith("Umask:")).split()[1], 8)
    umask = os.umask(0o022)  # no /proc: read it the only portable way (set, then restore)
    os.umask(umask)
    return 0o666 & ~umask


def write_store_file(path: Path, write: Callable[[Path], Any]) -> None:
    """Write a file of the store atomically, readable like a file written in place.

    The temporaries of :mod:`geoplant.files` are created 0600; a shared store should keep
    the permissions its files had when they were written directly.
    """
    def write_readable(tmp: Path) -> None:
        write(tmp)
        os.chmod(tmp, _file_mode())

    atomic_write_with(path, write_readable)


def read_json_dict(path: Path) -> dict[str, Any] | None:
    """A small JSON object file (the lock, the settings), or ``None`` if empty or unreadable."""
    try:
        holder = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return holder if isinstance(holder, dict) else None
