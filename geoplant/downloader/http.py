"""Fetch one file over HTTP(S): streamed into ``<name>.part``, resumed with ``Range`` after an
interruption, retried with exponential backoff, hashed while streaming, verified against the
expected size and sha256 and the size and digest the server announced, then renamed into place.

``<name>.part.json`` records what the server announced when the ``.part`` file was started
(size, ETag, Last-Modified, digest): a resume sends ``If-Range`` with that validator, and
starts over when the server shows another version of the file. A file whose announced or
received size is far from the catalog's approximate size is refused (`Expected.band_error`).

``requests`` is imported on first use, so planning and dry runs never load it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Final

from geoplant.downloader.expect import Digests, Expected, Fetched, Remote
from geoplant.downloader.lockfile import discard_partial, kept_note, partial_path, resume_path
from geoplant.errors import GeoplantError

if TYPE_CHECKING:
    import requests

__all__ = ["RemoteNotFound", "fetch_http", "open_session"]

_CHUNK: Final = 256 * 1024
_RETRY_STATUS: Final = frozenset({408, 425, 429, 500, 502, 503, 504})
_MAX_BACKOFF: Final = 60.0


class _Retryable(Exception):
    """A transient failure of one attempt (server busy, connection closed early)."""



class RemoteNotFound(GeoplantError):
    """The server has no file at this URL (HTTP 404/410): another name may be tried."""

def open_session() -> requests.Session:
    """A ``requests`` session for the mirror downloads of one run."""
    import requests

    session = requests.Session()
    session.headers["User-Agent"] = "geoplant-downloader"
    return session


class _Attempts:
    """Counts failed attempts at one file; sleeps between them, gives up after ``retries``
    with a message that says what is left on disk."""

    def __init__(self, target: Path, retries: int, backoff: float) -> None:
        self.target, self.retries, self.backoff = target, retries, backoff
        self.failures = 0

    def failed(self, problem: str) -> None:
        self.failures += 1
        if self.failures > self.retries:
            kept = partial_path(self.target).is_file()
            raise GeoplantError(
                f"{problem}; gave up after {self.retries} retries; {kept_note(self.target)}",
                path=self.target,
                fix="rerun the same command to resume" if kept else
                    "rerun the same command to download it again")
        time.sleep(min(self.backoff * 2 ** (self.failures - 1), _MAX_BACKOFF))


class _Counter:
    """Progress callback that also totals the bytes it is told about."""

    def __init__(self, progress: Callable[[int], None]) -> None:
        self.progress = progress
        self.total = 0

    def __call__(self, n: int) -> None:
        self.total += n
        self.progress(n)


def fetch_http(session: requests.Session, url: str, target: Path, expected: Expected, *,
               retries: int, backoff: float, timeout: float,
               progress: Callable[[int], None]) -> Fetched:
    """Stream ``url`` into ``target`` via ``target.part``.

    Parameters
    ----------
    session
        From `open_session`.
    url
        The file's URL.
    target
        Final path; ``<target>.part`` holds the bytes received so far, and is resumed.
    expected
        What the file must be: exact size or approximate size band, sha256 if known.
    retries, backoff, timeout
        Failed attempts allowed, first backoff in seconds (doubling, at most 60 s), socket
        timeout in seconds.
    progress
        Called with the size of every chunk written.

    Returns
    -------
    Fetched
        The sha256, the bytes transferred (over all attempts) and what the server announced.

    Raises
    ------
    GeoplantError
        On an HTTP error that is not transient, a size the server announces that disagrees
        with the catalog, a write error, or when the retries are spent (a transfer cut short
        or a corrupt file are retried: the first resumes, the second starts over).
    """
    import requests

    partial = partial_path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    attempts = _Attempts(target, retries, backoff)
    counter = _Counter(progress)
    while True:
        try:
            got = _attempt(session, url, target, expected, timeout=timeout, progress=counter)
        except (requests.ConnectionError, requests.Timeout,
                requests.exceptions.ChunkedEncodingError, _Retryable) as err:
            attempts.failed(f"download of {url} interrupted: {type(err).__name__}: {err}")
            continue
        except OSError as err:
            raise GeoplantError(f"cannot write ({err.strerror or err})", path=partial,
                                fix="free disk space or choose another --dest") from None
        if got is None:
            continue  # the .part file was not a prefix of the remote file: start over
        (sha, md5), size, remote = got
        bad = expected.mismatch(size, sha, remote, md5)
        if bad:
            discard_partial(target)  # corrupt: the next attempt starts from byte 0
            attempts.failed(f"downloaded {expected.file.path} failed its check ({bad}) and "
                            "was deleted")
            continue
        band = expected.band_error(size, path=target, what="received",
                                   kept="the file received was deleted")
        if band is not None:
            discard_partial(target)
            raise band
        os.replace(partial, target)
        resume_path(target).unlink(missing_ok=True)
        return Fetched(sha, counter.total, remote)


def _attempt(session: requests.Session, url: str, target: Path, expected: Expected, *,
             timeout: float, progress: Callable[[int], None],
             ) -> tuple[tuple[str, str | None], int, Remote] | None:
    """One request, resuming ``target.part`` if it exists; return the (sha256, md5) and size
    of the ``.part`` file and what the server announced, or None when the ``.part`` file was
    dropped and the fetch must restart."""
    partial = partial_path(target)
    have = partial.stat().st_size if partial.is_file() else 0
    known = _read_resume(target) if have else None
    with session.get(url, headers=_request_headers(have, known), stream=True,
                     timeout=timeout) as resp:
        opened = _open_mode(resp, have, known, url, target)
        if opened is None:
            return None
        mode, remote = opened
        _check_announced(expected, remote, target)
        if mode == "wb":
            _write_resume(target, remote)
        digests = Digests(md5=remote.md5 is not None)
        if mode == "ab":  # a resumed fetch hashes the whole file
            digests.feed_file(partial)
        with open(partial, mode) as out:
            for chunk in resp.iter_content(_CHUNK):
                out.write(chunk)
                digests.update(chunk)
                progress(len(chunk))
    size = partial.stat().st_size
    if remote.size is not None and size > remote.size:
        discard_partial(target)  # more than the whole file: not a prefix of it
        raise _Retryable(f"received {size} bytes, more than the {remote.size} announced")
    if remote.size is not None and size < remote.size:
        raise _Retryable(f"connection closed at byte {size} of {remote.size}")
    return digests.hexdigests(), size, remote


def _request_headers(have: int, known: Remote | None) -> dict[str, str]:
    """``Range`` to resume at byte ``have``, with ``If-Range``: the server sends the whole
    file (200) instead of the rest of another version of it."""
    if not have:
        return {}
    headers = {"Range": f"bytes={have}-"}
    validator = known.if_range() if known is not None else None
    if validator:
        headers["If-Range"] = validator
    return headers


def _check_announced(expected: Expected, remote: Remote, target: Path) -> None:
    """Refuse a size the server announces before a byte of it is written: not the catalog's
    exact size, or far from its approximate size."""
    if remote.size is None:
        return
    pf = expected.file
    if pf.exact_size is not None and remote.size != pf.exact_size:
        raise GeoplantError(
            f"server has {remote.size} bytes for {pf.path}, the catalog says {pf.exact_size}; "
            f"nothing more was downloaded; {kept_note(target)}",
            path=target, fix="check that --mirror serves this release")
    band = expected.band_error(remote.size, path=target, what="the server announces",
                               kept=f"nothing more was downloaded; {kept_note(target)}")
    if band is not None:
        raise band


def _read_resume(target: Path) -> Remote | None:
    """What the server announced when ``target.part`` was started (None: not recorded)."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        return Remote.from_json(json.loads(resume_path(target).read_text(encoding="utf-8")))
    return None


def _write_resume(target: Path, remote: Remote) -> None:
    """Record what the server announced for the ``.part`` file about to be (re)written."""
    resume_path(target).write_text(json.dumps(remote.to_json()) + "\n", encoding="utf-8")


def _open_mode(resp: requests.Response, have: int, known: Remote | None, url: str,
               target: Path) -> tuple[str, Remote] | None:
    """How to write ``resp``'s body: ``("ab", remote)`` to append to the ``.part`` file (a
    206 continuing at byte ``have`` of the same version) or ``("wb", remote)`` to rewrite it;
    ``remote`` is what the server announced. None: the ``.part`` file was deleted (not a
    prefix of the remote file, or of another version of it), restart from byte 0.

    Raises ``_Retryable`` on a transient HTTP status, `GeoplantError` on another error status.
    """
    if resp.status_code == 416 and have:
        discard_partial(target)  # the partial is not a prefix of the remote file
        return None
    if resp.status_code in _RETRY_STATUS:
        raise _Retryable(f"HTTP {resp.status_code}")
    if resp.status_code in (404, 410):
        raise RemoteNotFound(f"HTTP {resp.status_code} {resp.reason} for {url}",
                             path=target, fix="check --mirror and the part name")
    if resp.status_code >= 400:
        raise GeoplantError(f"HTTP {resp.status_code} {resp.reason} for {url}",
                            path=target, fix="check --mirror and the part name")
    if resp.status_code == 206 and have:
        m = re.match(r"bytes (\d+)-\d+/(\d+|\*)", resp.headers.get("Content-Range", ""))
        now = Remote.from_headers(resp.headers, whole=False)
        if m and m.group(2) != "*":
            now = Remote(int(m.group(2)), now.etag, now.last_modified)
        before = known or Remote()
        if not m or int(m.group(1)) != have or before.changed(now):
            discard_partial(target)  # another version (or a bad range): start over
            return None
        return "ab", before.merged(now)
    # A 200: a first request, or the server sends the whole file (it ignores ranges, or
    # If-Range found another version): the .part file is rewritten from byte 0.
    return "wb", Remote.from_headers(resp.headers)
