"""Unzip archive parts once: single zips, multi-volume zips (each volume a zip) and split zips
(byte pieces that concatenate to one zip), refusing members that would land outside DEST.

A marker ``DEST/.geoplant/extracted/<part>.json`` records each finished extraction with the
sha256 of the part's files, so a re-run skips it until the files change.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from geoplant.downloader.lockfile import STATE_DIR, LockFile
from geoplant.errors import GeoplantError
from geoplant.files import atomic_write_text

if TYPE_CHECKING:
    import zipfile

    from geoplant.catalog import Part

__all__ = ["ConcatReader", "extract_part", "safe_extract"]


class ConcatReader(io.RawIOBase):
    """Read-only, seekable view of several files laid end to end (split zip volumes)."""

    def __init__(self, paths: Sequence[Path]) -> None:
        self._files = [open(p, "rb") for p in paths]  # closed in close()
        self._sizes = [os.fstat(f.fileno()).st_size for f in self._files]
        self._starts = [sum(self._sizes[:i]) for i in range(len(self._sizes))]
        self._total = sum(self._sizes)
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._total}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        done = 0
        while done < len(view) and self._pos < self._total:
            i = max(k for k, s in enumerate(self._starts) if s <= self._pos)
            fh = self._files[i]
            fh.seek(self._pos - self._starts[i])
            n = fh.readinto(view[done:done + self._starts[i] + self._sizes[i] - self._pos])
            if not n:
                break
            done += n
            self._pos += n
        return done

    def close(self) -> None:
        for f in self._files:
            f.close()
        super().close()


def safe_extract(zf: zipfile.ZipFile, out: Path) -> None:
    """Extract every member of ``zf`` into ``out``, refusing the archive if any member would
    land outside it (``../`` or absolute names)."""
    root = out.resolve()
    for member in zf.infolist():
        resolved = (root / member.filename).resolve()
        if resolved != root and root not in resolved.parents:
            raise GeoplantError(f"archive member escapes the destination: {member.filename}",
                                path=out, fix="do not extract this archive")
    zf.extractall(root)


def extract_part(part: Part, dest: Path, lock: LockFile) -> bool:
    """Unzip an archive part once; return whether it extracted now (False: marker up to date).

    Raises
    ------
    GeoplantError
        When a file is not a valid zip, or a member would land outside the extraction folder.
    """
    marker = dest / STATE_DIR / "extracted" / f"{part.name}.json"
    fingerprint = {f.path: (lock.get(f.path) or {}).get("sha256") for f in part.files}
    if _marker_matches(marker, fingerprint):
        return False
    out = dest / part.extract_dir
    out.mkdir(parents=True, exist_ok=True)
    _unzip([dest / f.path for f in part.files], out, split=part.volume_format == "split")
    marker.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(marker, json.dumps({"part": part.name, "into": part.extract_dir,
                                          "files": fingerprint}, indent=1) + "\n")
    return True


def _marker_matches(marker: Path, fingerprint: dict[str, str | None]) -> bool:
    """Whether ``marker`` records an extraction of exactly these files (a damaged marker
    does not)."""
    if marker.is_file():
        with contextlib.suppress(OSError, ValueError):
            if json.loads(marker.read_text()).get("files") == fingerprint:
                return True
    return False


def _unzip(paths: list[Path], out: Path, *, split: bool) -> None:
    """Extract split volumes as one zip, or each path as its own zip, into ``out``."""
    import zipfile

    try:
        if split:
            with ConcatReader(paths) as raw, io.BufferedReader(raw) as buf, \
                    zipfile.ZipFile(buf) as zf:
                safe_extract(zf, out)
        else:
            for p in paths:
                with zipfile.ZipFile(p) as zf:
                    safe_extract(zf, out)
    except zipfile.BadZipFile as err:
        raise GeoplantError(f"not a valid zip archive ({err})", path=paths[0],
                            fix="delete it and rerun to download it again") from None
