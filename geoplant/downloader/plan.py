"""Which source serves each part: a ``/kaggle/input`` mount, the Kaggle API or an HTTP(S)
mirror (a plain base URL or a Seafile share), and the URL of each of its files."""

from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Final, Literal

from geoplant.downloader.mount import mounted_path
from geoplant.downloader.report import FileResult
from geoplant.errors import GeoplantError

if TYPE_CHECKING:
    from geoplant.catalog import Catalog, Part, PartSource, Source

__all__ = ["SOURCES", "MirrorKind", "PartPlan", "SourceChoice", "file_url", "mirror_kind",
           "plan_part"]

SourceChoice = Literal["kaggle", "http", "auto"]
SOURCES: Final[tuple[SourceChoice, ...]] = ("auto", "kaggle", "http")
MirrorKind = Literal["http", "seafile"]

_SEAFILE_SHARE = re.compile(r"/(seafile/)?d/[0-9a-f]{8,}/?$")


@dataclass
class PartPlan:
    """How one part is obtained, and the state of its files in DEST.

    ``method`` is ``kaggle``, ``http`` or ``mounted``; ``origin`` says from where, for the
    report (the Kaggle ref, the base URL or the mounted path). ``files`` is filled in by the
    present/verified check, release path -> `FileResult`.
    """

    part: Part
    method: str  # kaggle | http | mounted
    origin: str
    source: Source | None = None
    part_source: PartSource | None = None
    urls: dict[str, str] = field(default_factory=dict)  # file path -> URL (http)
    alt_urls: dict[str, tuple[str, ...]] = field(default_factory=dict)  # tried on a 404
    mounted: Path | None = None
    files: dict[str, FileResult] = field(default_factory=dict)


def mirror_kind(url: str) -> MirrorKind:
    """``"seafile"`` for a Seafile share link (``.../d/<id>``), else ``"http"``."""
    return "seafile" if _SEAFILE_SHARE.search(urllib.parse.urlsplit(url).path) else "http"


def file_url(base: str, remote_path: str, kind: str = "http") -> str:
    """URL of ``remote_path`` on a mirror: appended to a plain base, or a Seafile share link.

    Examples
    --------
    >>> file_url("https://example.org/glc24/", "A B/c.csv")
    'https://example.org/glc24/A%20B/c.csv'
    >>> file_url("https://lab.plantnet.org/seafile/d/bdb8", "x/y.zip", "seafile")
    'https://lab.plantnet.org/seafile/d/bdb8/files/?p=/x/y.zip&dl=1'
    """
    base = base.rstrip("/")
    if kind == "seafile":
        return f"{base}/files/?p=/{urllib.parse.quote(remote_path, safe='/')}&dl=1"
    return f"{base}/{urllib.parse.quote(remote_path, safe='/')}"


def plan_part(catalog: Catalog, part: Part, source: SourceChoice, mirror: str | None,
              ) -> PartPlan:
    """Choose how to obtain ``part``.

    With ``source="auto"``: a Kaggle kernel mount if present, else ``mirror`` if given, else
    the part's first catalog source. ``"kaggle"`` also takes a mount; ``"http"`` never does.

    Raises
    ------
    GeoplantError
        When the chosen kind of source does not serve the part.
    """
    if source in ("auto", "kaggle"):
        mounted = mounted_path(catalog, part)
        if mounted is not None:
            src, ps, path = mounted
            return PartPlan(part, "mounted", str(path), src, ps, mounted=path)
    if source == "auto":
        first = catalog.sources[next(iter(part.sources))]
        use_http = mirror is not None or not first.is_kaggle
    else:
        use_http = source == "http"
    if use_http:
        return _plan_http(catalog, part, mirror)
    return _plan_kaggle(catalog, part)


def _plan_http(catalog: Catalog, part: Part, mirror: str | None) -> PartPlan:
    if mirror is not None:
        kind = mirror_kind(mirror)
        urls = {f.path: file_url(mirror, f.path, kind) for f in part.files}
        return PartPlan(part, "http", mirror, urls=urls)
    http = [(catalog.sources[n], ps) for n, ps in part.sources.items()
            if not catalog.sources[n].is_kaggle]
    if not http:
        raise GeoplantError(
            f"part {part.name!r} is served only by Kaggle in the catalog",
            fix="use --source kaggle, or --mirror URL for an HTTP copy of the release")
    src, ps = http[0]
    assert src.url is not None
    # A source may serve a single-file part under its own path, a volume under its
    # remote_path; otherwise the release's path is the remote one.
    kind = "seafile" if src.type == "seafile" else "http"
    single = len(part.files) == 1
    remote = {f.path: (ps.path if ps.path and single else f.remote_path or f.path)
              for f in part.files}
    urls = {p: file_url(src.url, r, kind) for p, r in remote.items()}
    alt_urls = {f.path: tuple(file_url(src.url, a, kind) for a in ps.alt_paths)
                for f in part.files if single and ps.alt_paths}
    return PartPlan(part, "http", src.url, src, ps, urls=urls, alt_urls=alt_urls)


def _plan_kaggle(catalog: Catalog, part: Part) -> PartPlan:
    kaggle = [(catalog.sources[n], ps) for n, ps in part.sources.items()
              if catalog.sources[n].is_kaggle]
    if not kaggle:
        raise GeoplantError(
            f"part {part.name!r} has no Kaggle source (sources: {', '.join(part.sources)})",
            fix="use --source http (or --source auto)")
    src, ps = kaggle[0]
    return PartPlan(part, "kaggle", f"{src.type.removeprefix('kaggle-')} {src.ref}", src, ps)
