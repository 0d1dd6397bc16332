"""Fetch one file over HTTP(S): streamed into ``<name>.part``, resumed with ``Range`` after an
interruption, retried with exponential backoff, hashed while streaming, verified against the
expected size and sha256, then renamed into place.

``requests`` is imported on first use, so planning and dry runs never load it.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Final

from geoplant.downloader.lockfile import mismatch, partial_path
from geoplant.errors import GeoplantError

if TYPE_CHECKING:
    import requests

    from geoplant.catalog import PartFile

__all__ = ["fetch_http", "open_session"]

_CHUNK: Final = 256 * 1024
_RETRY_STATUS: Final = frozenset({408, 425, 429, 500, 502, 503, 504})
_MAX_BACKOFF: Final = 60.0


class _Retryable(Exception):
    """A transient failure of one attempt (server busy, connection closed early)."""


def open_session() -> requests.Session:
    """A ``requests`` session for the mirror downloads of one run."""
    import requests

    session = requests.Session()
    session.headers["User-Agent"] = "geoplant-downloader"
    return session


class _Attempts:
    """Counts failed attempts at one file; sleeps between them, gives up after ``retries``."""

    def __init__(self, target: Path, retries: int, backoff: float) -> None:
        self.target, self.retries, self.backoff = target, retries, backoff
        self.failures = 0

    def failed(self, problem: str) -> None:
        self.failures += 1
        if self.failures > self.retries:
            raise GeoplantError(f"{problem} (gave up after {self.retries} retries; the partial "
                                f"file is kept)", path=self.target,
                                fix="rerun the same command to resume")
        time.sleep(min(self.backoff * 2 ** (self.failures - 1), _MAX_BACKOFF))


class _Counter:
    """Progress callback that also totals the bytes it is told about."""

    def __init__(self, progress: Callable[[int], None]) -> None:
        self.progress = progress
        self.total = 0

    def __call__(self, n: int) -> None:
        self.total += n
        self.progress(n)


def fetch_http(session: requests.Session, url: str, target: Path, pf: PartFile,
               expected_sha: str | None, *, retries: int, backoff: float, timeout: float,
               progress: Callable[[int], None]) -> tuple[str, int]:
    """Stream ``url`` into ``target`` via ``target.part``.

    Parameters
    ----------
    session
        From `open_session`.
    url
        The file's URL.
    target
        Final path; ``<target>.part`` holds the bytes received so far, and is resumed.
    pf
        The catalog file (its exact size, if known, is checked).
    expected_sha
        The sha256 the file must have, if known.
    retries, backoff, timeout
        Failed attempts allowed, first backoff in seconds (doubling, at most 60 s), socket
        timeout in seconds.
    progress
        Called with the size of every chunk written.

    Returns
    -------
    tuple[str, int]
        The sha256 of the file and the bytes transferred (over all attempts).

    Raises
    ------
    GeoplantError
        On an HTTP error that is not transient, a size the server reports that disagrees with
        the catalog, a write error, or when the retries are spent.
    """
    import requests

    partial = partial_path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    attempts = _Attempts(target, retries, backoff)
    counter = _Counter(progress)
    while True:
        try:
            got = _attempt(session, url, target, pf, timeout=timeout, progress=counter)
        except (requests.ConnectionError, requests.Timeout,
                requests.exceptions.ChunkedEncodingError, _Retryable) as err:
            attempts.failed(f"download of {url} interrupted: {type(err).__name__}: {err}")
            continue
        except OSError as err:
            raise GeoplantError(f"cannot write ({err.strerror or err})", path=partial,
                                fix="free disk space or choose another --dest") from None
        if got is None:
            continue  # the .part file was not a prefix of the remote file: start over
        sha, size = got
        bad = mismatch(pf.exact_size, expected_sha, size, sha)
        if bad:
            partial.unlink()  # corrupt: start over from byte 0
            attempts.failed(f"downloaded {pf.path} is corrupt: {bad}")
            continue
        os.replace(partial, target)
        return sha, counter.total


def _attempt(session: requests.Session, url: str, target: Path, pf: PartFile, *,
             timeout: float, progress: Callable[[int], None]) -> tuple[str, int] | None:
    """One request, resuming ``target.part`` if it exists; return (sha256, size) of the
    ``.part`` file, or None when the ``.part`` file was dropped and the fetch must restart."""
    partial = partial_path(target)
    have = partial.stat().st_size if partial.is_file() else 0
    hasher = _hash_prefix(partial) if have else hashlib.sha256()
    headers = {"Range": f"bytes={have}-"} if have else {}
    with session.get(url, headers=headers, stream=True, timeout=timeout) as resp:
        opened = _open_mode(resp, have, partial, url, target)
        if opened is None:
            return None
        mode, total = opened
        if mode == "wb":  # the server sends the whole file: the prefix does not count
            hasher = hashlib.sha256()
        if pf.exact_size is not None and total is not None and total != pf.exact_size:
            raise GeoplantError(
                f"server has {total} bytes for {pf.path}, the catalog says {pf.exact_size}",
                path=target, fix="check that --mirror serves this release")
        with open(partial, mode) as out:
            for chunk in resp.iter_content(_CHUNK):
                out.write(chunk)
                hasher.update(chunk)
                progress(len(chunk))
    size = partial.stat().st_size
    if total is not None and size != total:
        raise _Retryable(f"connection closed at byte {size} of {total}")
    return hasher.hexdigest(), size


def _hash_prefix(partial: Path) -> hashlib._Hash:
    """A sha256 fed with the bytes already on disk, so a resumed fetch hashes the whole file."""
    hasher = hashlib.sha256()
    with open(partial, "rb") as fh:
        while chunk := fh.read(1 << 20):
            hasher.update(chunk)
    return hasher


def _open_mode(resp: requests.Response, have: int, partial: Path, url: str,
               target: Path) -> tuple[str, int | None] | None:
    """How to write ``resp``'s body: ``("ab", total)`` to append to the ``.part`` file (a 206
    continuing at byte ``have``) or ``("wb", total)`` to rewrite it; ``total`` is the full size
    when the server says it. None: the ``.part`` file was deleted, restart from byte 0.

    Raises ``_Retryable`` on a transient HTTP status, `GeoplantError` on another error status.
    """
    if resp.status_code == 416 and have:
        partial.unlink()  # the partial is not a prefix of the remote file
        return None
    if resp.status_code in _RETRY_STATUS:
        raise _Retryable(f"HTTP {resp.status_code}")
    if resp.status_code >= 400:
        raise GeoplantError(f"HTTP {resp.status_code} {resp.reason} for {url}",
                            path=target, fix="check --mirror and the part name")
    if resp.status_code == 206 and have:
        m = re.match(r"bytes (\d+)-\d+/(\d+|\*)", resp.headers.get("Content-Range", ""))
        if not m or int(m.group(1)) != have:
            partial.unlink()
            return None
        return "ab", None if m.group(2) == "*" else int(m.group(2))
    length = resp.headers.get("Content-Length")
    encoded = "Content-Encoding" in resp.headers  # length is of encoded bytes
    return "wb", int(length) if length and not encoded else None
