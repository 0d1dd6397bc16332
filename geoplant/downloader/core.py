"""`download`: select parts, plan where each comes from, check what DEST already holds, fetch
the rest in parallel, and extract archives.

The steps live in their own modules: `geoplant.downloader.plan` (sources and URLs),
`geoplant.downloader.lockfile` (what is present and verified), `geoplant.downloader.http` and
`geoplant.downloader.kaggle` (fetching), `geoplant.downloader.extract` (unzipping).
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
import urllib.parse
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from geoplant.downloader.expect import Expected, Fetched, Remote
from geoplant.downloader.extract import extract_part
from geoplant.downloader.http import RemoteNotFound, fetch_http, open_session
from geoplant.downloader.kaggle import fetch_kaggle, kaggle_api, kaggle_credentials_present
from geoplant.downloader.lockfile import LockEntry, LockFile, check_file
from geoplant.downloader.mount import link_mounted
from geoplant.downloader.plan import SOURCES, PartPlan, SourceChoice, plan_part
from geoplant.downloader.report import DownloadReport, FileResult, PartResult, human_size
from geoplant.errors import GeoplantError

if TYPE_CHECKING:
    import requests

    from geoplant.catalog import Catalog, PartFile

__all__ = ["download"]


def download(
    parts: Iterable[str] | str | None = None,
    dest: str | os.PathLike[str] | None = None,
    release: str = "glc24",
    source: SourceChoice = "auto",
    mirror: str | None = None,
    dry_run: bool = False,
    extract: bool = False,
    jobs: int = 4,
    *,
    verify: bool = False,
    accept_size: bool = False,
    retries: int = 5,
    backoff: float = 1.0,
    timeout: float = 60.0,
    progress: bool = True,
    catalog: Catalog | str | os.PathLike[str] | None = None,
) -> DownloadReport:
    """Download parts of a GeoPlant / GeoLifeCLEF release (the ``geoplant download`` command).

    Parameters
    ----------
    parts
        Part names or shell-style globs (``"s24-rasters-*"``), or ``"all"``. ``None`` lists
        every part in a dry run and is refused otherwise (a release weighs up to ~100 GiB).
    dest
        Release root to download into (default ``data/<release>``).
    release
        Catalog to use: ``"glc24"`` or ``"geoplant"`` (see ``data_catalog/``).
    source
        ``"kaggle"`` (Kaggle API), ``"http"`` (Seafile share or ``mirror``) or ``"auto"``:
        a Kaggle kernel mount if present, else ``mirror`` if given, else the part's first source.
    mirror
        Base URL of an HTTP(S) copy of the release: part paths are appended to it; a Seafile
        share link (``.../d/<id>``) gets Seafile's ``/files/?p=/<path>&dl=1`` form.
    dry_run
        Only report parts, sizes, totals and what is already present and verified.
    extract
        Unzip archive parts (multi-volume too) once, with a marker per finished extraction.
    jobs
        Files fetched in parallel.
    verify
        Re-hash present files instead of trusting a size + mtime match with the lock file.
    accept_size
        Accept a file whose size is far from the catalog's approximate size (outside
        `geoplant.downloader.expect.SIZE_BAND`); exact sizes and checksums still apply.
    retries, backoff, timeout
        HTTP retries per file, first backoff in seconds (doubling), socket timeout in seconds.
    progress
        Show tqdm progress bars.
    catalog
        A loaded `geoplant.catalog.Catalog` or a catalog YAML path, instead of ``release``.

    Returns
    -------
    DownloadReport
        One `PartResult` per selected part.

    Raises
    ------
    GeoplantError
        Unknown part or release, unwritable destination, missing Kaggle credentials, a file
        that stays corrupt or unreachable after the retries, a size the source announces or
        sends that the catalog rules out.
    """
    _check_arguments(source, jobs, mirror)
    cat = _load_catalog(catalog, release)
    names = [parts] if isinstance(parts, str) else (list(parts) if parts is not None else None)
    if not names and not dry_run:
        raise GeoplantError(
            f"no part named (release {cat.release!r} has {len(cat.parts)} parts)",
            fix=f"list them with 'geoplant download --release {cat.release} --dry-run', then "
                "name parts or globs (or 'all')")
    selected = cat.select(names or None)
    dest_path = Path(dest if dest is not None else Path("data") / cat.release).expanduser()
    _check_dest(dest_path, create=not dry_run)
    lock = LockFile(dest_path, cat.release, write=not dry_run)

    plans = [plan_part(cat, p, source, mirror) for p in selected]
    needs_kaggle = _check_present(plans, dest_path, lock, verify=verify,
                                  accept_size=accept_size)
    creds = kaggle_credentials_present() if needs_kaggle else None
    if dry_run:
        return DownloadReport(cat.release, dest_path, True, [_dry_result(p) for p in plans],
                              creds)

    api = kaggle_api() if needs_kaggle else None
    results = _execute(plans, dest_path, lock, api, retries=retries, backoff=backoff,
                       timeout=timeout, jobs=jobs, progress=progress, accept_size=accept_size)
    if extract:
        _extract_archives(plans, results, dest_path, lock)
    return DownloadReport(cat.release, dest_path, False, results, creds)


# ------------------------------------------------------------------------------- steps


def _check_arguments(source: str, jobs: int, mirror: str | None) -> None:
    if source not in SOURCES:
        raise GeoplantError(f"unknown source {source!r}", fix="use kaggle, http or auto")
    if jobs < 1:
        raise GeoplantError(f"jobs must be at least 1, not {jobs}", fix="pass --jobs 1 or more")
    if mirror is not None and urllib.parse.urlsplit(mirror).scheme not in ("http", "https"):
        raise GeoplantError(f"mirror must be an http(s) URL, not {mirror!r}",
                            fix="pass --mirror https://host/path")


def _load_catalog(catalog: Catalog | str | os.PathLike[str] | None, release: str) -> Catalog:
    from geoplant.catalog import Catalog, load_catalog

    if isinstance(catalog, Catalog):
        return catalog
    return load_catalog(catalog if catalog is not None else release)


def _check_dest(dest: Path, *, create: bool) -> None:
    """Refuse a destination that is (under) a file; with ``create``, make it and check that
    it is writable."""
    probe = dest
    while not probe.exists():
        if probe.is_symlink() or probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        what = "the destination" if probe == dest else "a parent of the destination"
        raise GeoplantError(f"{what} is a file, not a folder: {probe}", path=dest,
                            fix="choose another --dest")
    if not create:
        return
    try:
        dest.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest, prefix=".geoplant-write-test-")
        os.close(fd)
        os.unlink(tmp)
    except OSError as err:
        raise GeoplantError(f"destination is not writable ({err.strerror or err})", path=dest,
                            fix="choose a writable --dest") from None


def _check_present(plans: list[PartPlan], dest: Path, lock: LockFile, *, verify: bool,
                   accept_size: bool) -> bool:
    """Fill each plan's ``files`` with the state of its files in DEST; return whether a part
    still to fetch needs the Kaggle API."""
    needs_kaggle = False
    for plan in plans:
        if plan.method == "mounted":
            continue
        for pf in plan.part.files:
            plan.files[pf.path] = check_file(dest / pf.path, pf, lock, verify=verify,
                                             accept_size=accept_size, part=plan.part.name)
        if any(r.status != "present" for r in plan.files.values()) and plan.method == "kaggle":
            needs_kaggle = True
    return needs_kaggle


def _dry_result(plan: PartPlan) -> PartResult:
    """The dry-run status of a part, from the state of its files."""
    part = plan.part
    res = PartResult(part.name, "", plan.method, plan.origin, part.size, part.size_approx,
                     files=list(plan.files.values()))
    if plan.method == "mounted":
        res.status, res.method = "mounted", "mounted"
        return res
    states = {f.status for f in plan.files.values()}
    if states == {"present"}:
        res.status = "present"
    elif "partial" in states:
        have = sum(f.size or 0 for f in plan.files.values() if f.status == "partial")
        res.status = f"partial ({human_size(have, False)})"
    elif "unverified" in states:
        res.status = "present, unverified"
    else:
        res.status = "missing"
    return res


def _extract_archives(plans: list[PartPlan], results: list[PartResult], dest: Path,
                      lock: LockFile) -> None:
    for plan, res in zip(plans, results, strict=True):
        if plan.part.is_archive and plan.method != "mounted":
            res.extracted = extract_part(plan.part, dest, lock)


# ------------------------------------------------------------------------------- fetching


class _Task(NamedTuple):
    """One file to fetch, and the result to fill in."""

    plan: PartPlan
    pf: PartFile
    result: FileResult


def _execute(plans: list[PartPlan], dest: Path, lock: LockFile, api: Any, *, retries: int,
             backoff: float, timeout: float, jobs: int, progress: bool,
             accept_size: bool) -> list[PartResult]:
    """Link mounted parts, fetch every file not present (``jobs`` at a time), and return one
    `PartResult` per plan; the first failure is raised once every fetch has ended."""
    from tqdm.auto import tqdm

    results, tasks = _results_and_tasks(plans, dest)
    todo = sum(t.pf.size or 0 for t in tasks)
    bar = tqdm(total=todo or None, unit="B", unit_scale=True, unit_divisor=1024,
               desc="download", disable=not progress or not tasks, file=sys.stderr)
    bar_mutex = threading.Lock()

    def advance(n: int) -> None:
        with bar_mutex:
            bar.update(n)

    session = open_session() if any(t.plan.method == "http" for t in tasks) else None
    fetcher = _Fetcher(dest, lock, api, session, advance, retries=retries, backoff=backoff,
                       timeout=timeout, quiet=not progress, accept_size=accept_size)
    try:
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            futures = [pool.submit(fetcher.fetch, t) for t in tasks]
            errors = [f.exception() for f in futures]
    finally:
        bar.close()
        if session is not None:
            session.close()
    for err in errors:
        if err is not None:
            raise err
    for plan, res in zip(plans, results, strict=True):
        if plan.method != "mounted" and any(f.status == "fetched" for f in res.files):
            res.status = "downloaded"
    return results


def _results_and_tasks(plans: list[PartPlan], dest: Path,
                       ) -> tuple[list[PartResult], list[_Task]]:
    """A ``present`` result per plan (``mounted`` once linked) and the files to fetch."""
    results: list[PartResult] = []
    tasks: list[_Task] = []
    for plan in plans:
        part = plan.part
        res = PartResult(part.name, "present", plan.method, plan.origin, part.size,
                         part.size_approx)
        results.append(res)
        if plan.method == "mounted":
            link_mounted(plan, dest)
            res.status = "mounted"
            continue
        for pf in part.files:
            fres = plan.files[pf.path]
            res.files.append(fres)
            if fres.status != "present":
                tasks.append(_Task(plan, pf, fres))
    return results, tasks


class _Fetcher:
    """Fetches one `_Task` (from any thread) and records it in the lock file."""

    def __init__(self, dest: Path, lock: LockFile, api: Any, session: requests.Session | None,
                 advance: Callable[[int], None], *, retries: int, backoff: float,
                 timeout: float, quiet: bool, accept_size: bool) -> None:
        self.dest, self.lock, self.api, self.session = dest, lock, api, session
        self.advance = advance
        self.retries, self.backoff, self.timeout, self.quiet = retries, backoff, timeout, quiet
        self.accept_size = accept_size

    def _fetch_http_any(self, plan: PartPlan, pf: PartFile, target: Path,
                        expected: Expected) -> tuple[str, Fetched]:
        """Fetch from the part's URL, else from its alternative names in turn (on a 404)."""
        assert self.session is not None
        urls = (plan.urls[pf.path], *plan.alt_urls.get(pf.path, ()))
        for i, url in enumerate(urls):
            try:
                return url, fetch_http(self.session, url, target, expected,
                                       retries=self.retries, backoff=self.backoff,
                                       timeout=self.timeout, progress=self.advance)
            except RemoteNotFound:
                if i == len(urls) - 1:
                    raise
        raise AssertionError("unreachable")

    def fetch(self, task: _Task) -> None:
        plan, pf, fres = task
        target = self.dest / pf.path
        expected = _expected(plan, pf, self.lock.get(pf.path), accept_size=self.accept_size)
        if plan.method == "http":
            assert self.session is not None
            url, got = self._fetch_http_any(plan, pf, target, expected)
            fres.url = url
        else:
            got = fetch_kaggle(self.api, plan, self.dest, expected, quiet=self.quiet)
            self.advance(got.transferred)
            url = plan.origin
        fres.status, fres.sha256, fres.fetched_bytes = "fetched", got.sha256, got.transferred
        fres.size = target.stat().st_size
        self.lock.record(pf.path, target, sha256=got.sha256, source=plan.method, url=url,
                         part=plan.part.name, remote=got.remote,
                         size_accepted=expected.outside_band(fres.size))


def _expected(plan: PartPlan, pf: PartFile, entry: LockEntry | None, *,
              accept_size: bool) -> Expected:
    """What a fetch of ``pf`` must give: the catalog's checks, and the sha256 the lock file
    recorded unless that record contradicts itself (its size is not the size its source
    announced: a bad file was recorded, its hash is no reference)."""
    old = entry or {}
    recorded = Remote.from_json(old)
    sha = old.get("sha256")
    if recorded.size is not None and old.get("size") != recorded.size:
        sha = None
    return Expected(plan.part.name, pf, sha, recorded, accept_size=accept_size)
