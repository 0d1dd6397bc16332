"""What a download run found and did: one `FileResult` per file, one `PartResult` per part,
and the `DownloadReport` that prints them as a table."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["DownloadReport", "FileResult", "PartResult", "human_size"]


@dataclass
class FileResult:
    """Outcome for one file of a part."""

    path: str
    status: str  # present | fetched | mounted | missing | partial | unverified
    size: int | None = None
    sha256: str | None = None
    fetched_bytes: int = 0
    url: str | None = None


@dataclass
class PartResult:
    """Outcome for one part: ``present``, ``downloaded``, ``mounted``; in a dry run ``missing``,
    ``partial (...)`` or ``present, unverified`` too."""

    name: str
    status: str
    method: str  # kaggle | http | mounted | -
    origin: str  # the Kaggle ref, the mirror URL or the mounted folder
    size: int | None
    size_approx: bool
    files: list[FileResult] = field(default_factory=list)
    extracted: bool | None = None  # None: not asked / not an archive

    @property
    def fetched_bytes(self) -> int:
        """Bytes transferred for this part in this run."""
        return sum(f.fetched_bytes for f in self.files)


@dataclass
class DownloadReport:
    """What `geoplant.downloader.download` found and did."""

    release: str
    dest: Path
    dry_run: bool
    parts: list[PartResult]
    kaggle_credentials: bool | None = None  # None: Kaggle not needed

    @property
    def fetched_bytes(self) -> int:
        """Bytes transferred in this run."""
        return sum(p.fetched_bytes for p in self.parts)

    def lines(self) -> list[str]:
        """Human-readable table and summary."""
        out = [f"{'PART':<36} {'SIZE':>11}  {'STATUS':<22} SOURCE"]
        for p in self.parts:
            out.append(f"{p.name:<36} {human_size(p.size, p.size_approx):>11}  {p.status:<22} "
                       f"{p.method} {p.origin}".rstrip())
        return out + self._summary()

    def _summary(self) -> list[str]:
        known = sum(p.size or 0 for p in self.parts)
        unknown = sum(p.size is None for p in self.parts)
        approx = any(p.size_approx for p in self.parts)
        ready = [p for p in self.parts if p.status in ("present", "mounted", "downloaded")]
        todo = [p for p in self.parts if p not in ready]
        todo_size = sum(p.size or 0 for p in todo)
        tail = f" + {unknown} part(s) of unknown size" if unknown else ""
        out = [f"total: {len(self.parts)} part(s), {human_size(known, approx)}{tail}",
               f"present and verified (or mounted): {len(ready)} part(s); "
               f"{'to fetch' if self.dry_run else 'not fetched'}: {len(todo)} part(s), "
               f"{human_size(todo_size, approx)}"]
        if not self.dry_run:
            out.append(f"fetched this run: {human_size(self.fetched_bytes, False)} "
                       f"into {self.dest}")
        if self.kaggle_credentials is False:
            out.append("note: Kaggle credentials not found (set KAGGLE_USERNAME and KAGGLE_KEY, "
                       "or put kaggle.json in ~/.kaggle/)")
        return out


def human_size(n: int | None, approx: bool) -> str:
    """``n`` bytes in binary units (``"1.5 MiB"``), ``~``-prefixed when approximate.

    Examples
    --------
    >>> human_size(1536, False), human_size(3 * 1024**3, True), human_size(None, False)
    ('1.5 KiB', '~3.0 GiB', 'unknown')
    """
    if n is None:
        return "unknown"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            text = f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
            return ("~" if approx else "") + text
        value /= 1024
    raise AssertionError  # pragma: no cover
