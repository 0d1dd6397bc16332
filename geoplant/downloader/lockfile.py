"""What this tool records in DEST, and whether a file there is present and verified.

``DEST/geoplant.lock.json`` (`LockFile`) holds the size, mtime, sha256 and origin of every file
a run fetched or hashed, and what its source announced (size, ETag, Last-Modified, digest), so
later runs trust a file whose size and mtime still match without re-reading it, and never a
file whose size differs from the source's. ``DEST/.geoplant/`` holds the extraction markers
and the Kaggle staging folder. An interrupted HTTP fetch leaves ``<name>.part`` and
``<name>.part.json`` (what the server announced for it, so a resume can tell a changed file).
"""

from __future__ import annotations

import datetime as _dt
import json
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Final, TypedDict

from geoplant.downloader.expect import Expected, Remote
from geoplant.downloader.report import FileResult
from geoplant.files import atomic_write_text, sha256_file

if TYPE_CHECKING:
    from geoplant.catalog import PartFile

__all__ = ["LOCK_FILE", "STATE_DIR", "LockEntry", "LockFile", "check_file", "discard_partial",
           "kept_note", "partial_path", "resume_path"]

#: Lock file in DEST: sha256, size and origin of every file this tool fetched.
LOCK_FILE: Final = "geoplant.lock.json"
#: Hidden folder in DEST for extraction markers and Kaggle staging.
STATE_DIR: Final = ".geoplant"


class LockEntry(TypedDict, total=False):
    """One file's record in the lock file (read back from JSON, so every key may be absent)."""

    size: int
    mtime_ns: int
    sha256: str
    source: str  # kaggle | http | local (hashed in place, not fetched)
    url: str
    part: str
    recorded: str  # ISO 8601, UTC
    # What the source announced (`Remote.to_json`): the file must keep that size.
    source_size: int
    etag: str
    last_modified: str
    md5: str
    size_accepted: bool  # outside the band of an approximate catalog size, by --accept-size


class LockFile:
    """``DEST/geoplant.lock.json``: thread-safe, written atomically after every change.

    Parameters
    ----------
    dest
        The release root holding the lock file.
    release
        Release name written into the file.
    write
        Whether `record` writes the file (false in a dry run: records stay in memory).
    """

    def __init__(self, dest: Path, release: str, *, write: bool) -> None:
        self.path = dest / LOCK_FILE
        self.release = release
        self._write = write
        self._mutex = threading.Lock()
        self.files: dict[str, LockEntry] = {}
        if self.path.is_file():
            try:
                data = json.loads(self.path.read_text(encoding="utf-8"))
                self.files = dict(data.get("files", {}))
            except (OSError, ValueError):
                self.files = {}  # a damaged lock only costs re-hashing

    def get(self, path: str) -> LockEntry | None:
        """The record of release path ``path``, if any."""
        with self._mutex:
            return self.files.get(path)

    def record(self, path: str, target: Path, *, sha256: str, source: str,
               url: str | None = None, part: str | None = None, remote: Remote | None = None,
               size_accepted: bool = False) -> None:
        """Record ``target`` (release path ``path``) with its current size and mtime, and what
        its source announced (``remote``)."""
        st = target.stat()
        entry: LockEntry = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha256,
                            "source": source}
        if url is not None:
            entry["url"] = url
        if part is not None:
            entry["part"] = part
        if remote is not None:
            entry.update(remote.to_json())  # type: ignore[typeddict-item]
        if size_accepted:
            entry["size_accepted"] = True
        entry["recorded"] = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
        with self._mutex:
            self.files[path] = entry
            if self._write:
                data = {"version": 1, "release": self.release, "files": self.files}
                atomic_write_text(self.path, json.dumps(data, indent=1, sort_keys=True) + "\n")


def partial_path(target: Path) -> Path:
    """Where ``target`` is written before its final rename (``<name>.part``)."""
    return target.with_name(target.name + ".part")


def resume_path(target: Path) -> Path:
    """What the server announced for ``target``'s ``.part`` file (``<name>.part.json``)."""
    return target.with_name(target.name + ".part.json")


def discard_partial(target: Path) -> None:
    """Delete ``target``'s ``.part`` file and its resume record, if any."""
    for path in (partial_path(target), resume_path(target)):
        path.unlink(missing_ok=True)


def kept_note(target: Path) -> str:
    """What is left of an unfinished fetch of ``target``, read from the disk so that the
    message says what really is there."""
    partial = partial_path(target)
    if partial.is_file():
        return f"the {partial.stat().st_size} bytes received are kept in {partial.name} to resume"
    return "no partial file is kept"


def check_file(target: Path, pf: PartFile, lock: LockFile, *, verify: bool,
               accept_size: bool = False, part: str = "") -> FileResult:
    """State of one file already in DEST (no network).

    ``present`` when it matches the catalog sha256, else the lock file's (a size + mtime match
    with the lock skips re-hashing unless ``verify``), else an exact catalog size; ``partial``
    when only its ``.part`` file exists; ``unverified`` when it exists but cannot be trusted
    (its size differs from the catalog's exact size or from the size its source announced,
    or is far from an approximate catalog size, see `geoplant.downloader.expect.SIZE_BAND`,
    unless accepted); ``missing`` otherwise. A file hashed here is recorded in the lock file.
    """
    res = FileResult(pf.path, "missing", pf.size)
    partial = partial_path(target)
    if not target.is_file():
        if partial.is_file():
            res.status = "partial"
            res.fetched_bytes = 0
            res.size = partial.stat().st_size
        return res
    st = target.stat()
    entry = lock.get(pf.path)
    if _wrong_size(st.st_size, pf, entry, accept_size=accept_size, part=part):
        res.status = "unverified"
        return res
    lock_sha = entry.get("sha256") if entry else None
    expected = pf.sha256 or lock_sha
    fast = (entry is not None and not verify and entry.get("size") == st.st_size
            and entry.get("mtime_ns") == st.st_mtime_ns
            and (pf.sha256 is None or lock_sha == pf.sha256))
    if fast:
        res.status, res.size, res.sha256 = "present", st.st_size, lock_sha
        return res
    if expected is None and pf.exact_size is None:
        res.status = "unverified"  # nothing to check it against: fetch it again
        return res
    sha = sha256_file(target)
    if expected is not None and sha != expected:
        res.status = "unverified"
        return res
    res.status, res.size, res.sha256 = "present", st.st_size, sha
    if entry is None or entry.get("sha256") != sha or entry.get("mtime_ns") != st.st_mtime_ns:
        accepted = Expected(part, pf).outside_band(st.st_size)  # in: accepted above
        _record_again(lock, pf.path, target, sha, entry, size_accepted=accepted)
    return res


def _wrong_size(size: int, pf: PartFile, entry: LockEntry | None, *, accept_size: bool,
                part: str) -> bool:
    """Whether ``size`` rules the file out: not the catalog's exact size, not the size its
    source announced when it was fetched, or outside the band of an approximate size (unless
    accepted now or when it was fetched)."""
    if pf.exact_size is not None and size != pf.exact_size:
        return True
    announced = Remote.from_json(entry or {}).size
    if announced is not None and size != announced:
        return True
    accepted = accept_size or bool((entry or {}).get("size_accepted"))
    return not accepted and Expected(part, pf).outside_band(size)


def _record_again(lock: LockFile, path: str, target: Path, sha: str, entry: LockEntry | None,
                  *, size_accepted: bool) -> None:
    """Record a file hashed in place, keeping what the lock knew of its origin."""
    old = entry or {}
    lock.record(path, target, sha256=sha, source=old.get("source", "local"), url=old.get("url"),
                part=old.get("part"), remote=Remote.from_json(old), size_accepted=size_accepted)
