"""What a fetched file must be: the catalog's exact size and sha256, what the source announced
(`Remote`: size, validators, digest), and a band around an approximate catalog size.

Almost no real file has a published checksum, so the size the source announces
(``Content-Length``, the total of a ``Content-Range``, the Kaggle download's
``Content-Length``) is what catches a short or padded transfer, and a digest the server sends
(Google Cloud Storage's ``x-goog-hash: md5=...``, which Kaggle downloads carry, or
``Content-MD5``) catches a flipped byte. Both are recorded in the lock file with the sha256.

An approximate catalog size (``size_approx``) only says what order of size to expect:
`SIZE_BAND` is how far from it a file may be before it is refused as a wrong file.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, NamedTuple

from geoplant.downloader.report import human_size
from geoplant.errors import GeoplantError

if TYPE_CHECKING:
    from geoplant.catalog import PartFile

__all__ = ["SIZE_BAND", "Digests", "Expected", "Fetched", "Remote", "digest_file", "mismatch",
           "outside_band"]

#: Accepted sizes around an approximate catalog size, as factors (low, high). The catalog's
#: approximate figures are rounded MiB/GiB (< 5 % off), midpoints of listed ranges (< 10 %)
#: or sizes borrowed from another copy of the same content ("byte size may differ", one
#: known to lack a column): a factor 2 leaves room for those. What it is there to catch is
#: off by far more: an HTML error page or a truncated file (a 20 MB body for a ~359 MiB part
#: is 0.05x), another part's file, a different release.
SIZE_BAND: Final = (0.5, 2.0)

_READ_BLOCK: Final = 1 << 20


def outside_band(approx: int, size: int) -> bool:
    """Whether ``size`` bytes is too far from an approximate size of ``approx`` bytes.

    Examples
    --------
    >>> outside_band(376_000_000, 20_000_000), outside_band(376_000_000, 400_000_000)
    (True, False)
    """
    low, high = SIZE_BAND
    return not approx * low <= size <= approx * high


@dataclass(frozen=True)
class Remote:
    """What the source announced about a file: its size, validators and digest.

    ``size`` is the full size (``Content-Length`` of a whole body, the total of a
    ``Content-Range``); ``etag`` and ``last_modified`` identify the object, so a resume
    never appends bytes of another version; ``md5`` (hex) is the digest of the whole object
    when the server sends one.
    """

    size: int | None = None
    etag: str | None = None
    last_modified: str | None = None
    md5: str | None = None

    @classmethod
    def from_headers(cls, headers: Mapping[str, str], *, whole: bool = True) -> Remote:
        """What ``headers`` announce; ``whole``: the body is the whole object (not a 206),
        so its ``Content-Length`` and ``Content-MD5`` describe the object."""
        encoded = "Content-Encoding" in headers  # lengths and digests of the encoded bytes
        length = headers.get("Content-Length", "")
        size = int(length) if whole and not encoded and length.isdigit() else None
        md5 = None if encoded or not whole else _md5_header(headers)
        return cls(size, headers.get("ETag"), headers.get("Last-Modified"), md5)

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> Remote:
        """Read back `to_json` (a lock entry or a resume record); bad values are dropped."""
        size = data.get("source_size")
        text = {k: v if isinstance(v, str) else None
                for k in ("etag", "last_modified", "md5") if (v := data.get(k)) is not None}
        return cls(size if isinstance(size, int) and not isinstance(size, bool) else None,
                   text.get("etag"), text.get("last_modified"), text.get("md5"))

    def to_json(self) -> dict[str, Any]:
        """The known fields, as stored in the lock file (``source_size`` for ``size``)."""
        out = {"source_size": self.size, "etag": self.etag,
               "last_modified": self.last_modified, "md5": self.md5}
        return {k: v for k, v in out.items() if v is not None}

    def if_range(self) -> str | None:
        """The validator for an ``If-Range`` header: a strong ETag, else Last-Modified (a
        weak ETag may not be used there)."""
        if self.etag and not self.etag.startswith("W/"):
            return self.etag
        return self.last_modified

    def changed(self, now: Remote) -> str | None:
        """How ``now`` shows a different object than ``self`` (None: no sign of a change)."""
        for what, old, new in (("ETag", self.etag, now.etag),
                               ("Last-Modified", self.last_modified, now.last_modified),
                               ("size", self.size, now.size)):
            if old is not None and new is not None and old != new:
                return f"{what} {old} -> {new}"
        return None

    def merged(self, now: Remote) -> Remote:
        """``now``, with what it does not say taken from ``self`` (a 206 has no whole-object
        Content-Length or digest)."""
        return Remote(now.size if now.size is not None else self.size,
                      now.etag or self.etag, now.last_modified or self.last_modified,
                      now.md5 or self.md5)


def _md5_header(headers: Mapping[str, str]) -> str | None:
    """The hex md5 in ``x-goog-hash: crc32c=...,md5=<b64>`` or ``Content-MD5: <b64>``."""
    match = re.search(r"(?:^|,)\s*md5=([A-Za-z0-9+/=]+)", headers.get("x-goog-hash", ""))
    value = match[1] if match else headers.get("Content-MD5", "").strip()
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw.hex() if len(raw) == 16 else None


class Digests:
    """sha256, and md5 when a server digest is to be checked, fed in one pass."""

    def __init__(self, *, md5: bool) -> None:
        self.sha256 = hashlib.sha256()
        self.md5 = hashlib.md5(usedforsecurity=False) if md5 else None

    def update(self, data: bytes) -> None:
        self.sha256.update(data)
        if self.md5 is not None:
            self.md5.update(data)

    def feed_file(self, path: Path) -> Digests:
        """Feed the bytes of ``path`` (a resumed prefix, a staged file); return self."""
        with open(path, "rb") as handle:
            while block := handle.read(_READ_BLOCK):
                self.update(block)
        return self

    def hexdigests(self) -> tuple[str, str | None]:
        """(sha256, md5 or None)."""
        return self.sha256.hexdigest(), None if self.md5 is None else self.md5.hexdigest()


def digest_file(path: Path, *, md5: bool) -> tuple[str, str | None]:
    """(sha256, md5 if asked) of ``path``, in one read."""
    return Digests(md5=md5).feed_file(path).hexdigests()


def mismatch(exact_size: int | None, expected_sha: str | None, size: int, sha: str, *,
             remote: Remote | None = None, md5: str | None = None) -> str | None:
    """Why a fetched file disagrees with what was expected or announced, or None.

    Examples
    --------
    >>> mismatch(None, None, 5, "ab", remote=Remote(size=7))
    'size 5 != the 7 bytes the source announced'
    """
    if remote is not None and remote.size is not None and size != remote.size:
        return f"size {size} != the {remote.size} bytes the source announced"
    if exact_size is not None and size != exact_size:
        return f"size {size} != catalog size {exact_size}"
    if expected_sha is not None and sha != expected_sha:
        return f"sha256 {sha[:12]}… != expected {expected_sha[:12]}…"
    if remote is not None and remote.md5 is not None and md5 is not None and md5 != remote.md5:
        return f"md5 {md5[:12]}… != the server's {remote.md5[:12]}…"
    return None


class Fetched(NamedTuple):
    """A file fetched into place: its sha256, the bytes transferred (over all attempts) and
    what the source announced about it."""

    sha256: str
    transferred: int
    remote: Remote


@dataclass(frozen=True)
class Expected:
    """What one file of a part must be.

    Parameters
    ----------
    part
        The part's name (for messages).
    file
        The catalog file: sha256, exact size, or approximate size for `SIZE_BAND`.
    recorded_sha256, recorded
        The sha256 the lock file recorded from an earlier fetch, and what that fetch's source
        announced: a new fetch must give the same bytes unless the source now announces
        another version (another ETag, Last-Modified or size).
    accept_size
        Accept a size outside `SIZE_BAND` (``--accept-size``).
    """

    part: str
    file: PartFile
    recorded_sha256: str | None = None
    recorded: Remote = Remote()
    accept_size: bool = False

    def sha256(self, remote: Remote | None = None) -> str | None:
        """The sha256 the file must have, now that the source announced ``remote``."""
        if self.file.sha256 is not None:
            return self.file.sha256
        if remote is not None and self.recorded.changed(remote):
            return None  # another version than the one recorded
        return self.recorded_sha256

    def mismatch(self, size: int, sha: str, remote: Remote | None = None,
                 md5: str | None = None) -> str | None:
        """`mismatch` against the catalog, the lock file and ``remote``."""
        return mismatch(self.file.exact_size, self.sha256(remote), size, sha, remote=remote,
                        md5=md5)

    def outside_band(self, size: int) -> bool:
        """Whether ``size`` is outside `SIZE_BAND` of the file's approximate catalog size
        (false for an exact or unknown size, and when the catalog has a sha256: a file that
        matches it is right whatever the approximate size says)."""
        pf = self.file
        return (pf.size_approx and pf.size is not None and pf.sha256 is None
                and outside_band(pf.size, size))

    def band_error(self, size: int, *, path: Path, what: str, kept: str,
                   ) -> GeoplantError | None:
        """The error for ``size`` bytes outside `SIZE_BAND` of an approximate catalog size
        (None when in the band, exact, unknown or accepted). ``what`` says where the size
        comes from (``"the server announces"``), ``kept`` what is left on disk."""
        if self.accept_size or not self.outside_band(size):
            return None
        approx = self.file.size
        assert approx is not None
        low, high = SIZE_BAND
        return GeoplantError(
            f"part {self.part!r}: {what} {size} bytes ({human_size(size, False)}) for "
            f"{self.file.path}, but the catalog expects {human_size(approx, True)} "
            f"(accepted: {low:g}x-{high:g}x of that); not recorded as present; {kept}",
            path=path,
            fix="check that the source (--mirror) serves this release; if the catalog's "
                "size is wrong, correct it (--catalog FILE) or accept this file with "
                "--accept-size")
