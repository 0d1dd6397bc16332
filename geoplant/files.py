"""File helpers every layer shares: atomic writes, sha256 of a file, URL-style path joins.

Torch-free and dependency-light on purpose: the build, the store, the downloader and the
training checkpoints all write through :func:`atomic_write_bytes` / :func:`atomic_write_with`,
so a killed process leaves either the old file or the new one, never half of one. Temporary
files are named ``.<name>.tmp-<pid>-<random>`` beside their target, so a resumed job can find
and remove the ones a killed job left (:func:`remove_stale_temporaries`).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final

TMP_MARK: Final = ".tmp-"
_READ_BLOCK: Final = 1 << 20
_O_BINARY: Final = getattr(os, "O_BINARY", 0)  # Windows: no newline translation

__all__ = [
    "TMP_MARK",
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_write_url",
    "atomic_write_with",
    "join_path",
    "json_default",
    "pid_alive",
    "remove_stale_temporaries",
    "sha256_file",
]


def join_path(base: str, *parts: str) -> str:
    """Join URL or path segments with ``/`` (works for local paths and fsspec URLs)."""
    return "/".join([str(base).rstrip("/"), *parts])


@contextlib.contextmanager
def _temporary_beside(path: Path) -> Iterator[Path]:
    """A temporary file beside ``path``; removed unless it was renamed into place.

    Created with mode ``0o666`` less the umask, as ``open()`` would create ``path`` itself
    (``tempfile.mkstemp`` makes 0600 files, which the rename would carry to ``path``).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _create_temporary(path)
    try:
        yield Path(tmp)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _create_temporary(path: Path) -> str:
    """Create ``.<name>.tmp-<pid>-<random>`` beside ``path`` (exclusively) and return it.

    ``os.open`` with mode ``0o666`` lets the kernel apply the umask: reading the umask
    (``os.umask`` sets it to read it) is process-wide and would race with other threads.
    """
    prefix = f".{path.name}{TMP_MARK}{os.getpid()}-"
    for _ in range(100):
        tmp = os.path.join(path.parent, prefix + secrets.token_hex(4))
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_BINARY, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise FileExistsError(f"no free temporary name beside {path}")  # pragma: no cover


def atomic_write_with(path: str | os.PathLike[str], write: Callable[[Path], Any], *,
                      fsync: bool = False) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it into place.

    Parameters
    ----------
    path
        The final file (its folder is created if needed).
    write
        Writes the whole content to the path it is given (e.g. ``lambda p: torch.save(o, p)``).
    fsync
        Flush the temporary file to disk before the rename (checkpoints: survive a power cut).

    Returns
    -------
    Path
        ``path``.
    """
    target = Path(path)
    with _temporary_beside(target) as tmp:
        write(tmp)
        if fsync:
            with open(tmp, "rb") as handle:
                os.fsync(handle.fileno())
        os.replace(tmp, target)
    return target


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, *, fsync: bool = False) -> Path:
    """Write ``data`` to ``path`` atomically (temporary file + rename)."""
    return atomic_write_with(path, lambda tmp: tmp.write_bytes(data), fsync=fsync)


def atomic_write_text(path: str | os.PathLike[str], text: str, *, fsync: bool = False) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically (temporary file + rename)."""
    return atomic_write_bytes(path, text.encode("utf-8"), fsync=fsync)


def atomic_write_url(url: str, data: bytes, storage_options: dict[str, Any] | None = None) -> str:
    """Write ``data`` to a local path or fsspec URL atomically.

    Local files go through :func:`atomic_write_bytes`; on object stores a single PUT is
    already atomic.
    """
    import fsspec

    fs, root = fsspec.core.url_to_fs(url, **(storage_options or {}))
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)
    if {"file", "local"} & set(protocols):
        atomic_write_bytes(root, data)
    else:
        fs.pipe_file(root, data)
    return root


def json_default(value: Any) -> Any:
    """``json.dumps(default=...)`` for results: numpy scalars and arrays as Python values,
    anything else as its ``str``."""
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def sha256_file(path: str | os.PathLike[str]) -> str:
    """The hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(_READ_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def remove_stale_temporaries(folder: str | os.PathLike[str]) -> list[Path]:
    """Remove temporaries left in ``folder`` (recursively) by killed writers of this module.

    Only files whose writer process is gone are removed, so a concurrent writer's
    temporary survives. Returns the removed paths.
    """
    removed = []
    for tmp in Path(folder).rglob(f".*{TMP_MARK}*"):
        pid_text = tmp.name.rsplit(TMP_MARK, 1)[1].split("-", 1)[0]
        if not tmp.is_file() or (pid_text.isdigit() and pid_alive(int(pid_text))):
            continue
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
            removed.append(tmp)
    return removed


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this host (one we may not signal counts as running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
