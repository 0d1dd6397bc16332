"""``geoplant download``: fetch the parts of a release from Kaggle or an HTTP(S) mirror.

What a run does, part by part (parts come from `geoplant.catalog`):

1. In a Kaggle kernel, a part already mounted under ``/kaggle/input`` (override the root with
   ``GEOPLANT_KAGGLE_INPUT``) is linked into DEST, not downloaded.
2. A part present in DEST and verified is skipped. Verified means: its sha256 matches the
   catalog, or else the one recorded in ``DEST/geoplant.lock.json`` by the run that fetched it
   (a size + mtime match with the lock skips re-hashing; ``verify=True`` forces it); with no
   checksum at all, an exact catalog size.
3. Otherwise it is fetched: through the ``kaggle`` package's Python API (no prompt, no shell),
   or over HTTP(S) with streaming, ``Range`` resume of an interrupted ``.part`` file, retries
   with exponential backoff, sha256 computed while streaming, size/checksum verification and
   an atomic rename. Files are fetched in parallel (``jobs``).
4. With ``extract=True`` archives (multi-volume too) are unzipped once; a marker in
   ``DEST/.geoplant/extracted/`` records each finished extraction, so re-runs skip it.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import hashlib
import io
import json
import os
import re
import shutil
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

from geoplant.errors import GeoplantError

if TYPE_CHECKING:
    import requests

    from geoplant.catalog import Catalog, Part, PartFile, PartSource, Source

SourceChoice = Literal["kaggle", "http", "auto"]
SOURCES: Final[tuple[SourceChoice, ...]] = ("auto", "kaggle", "http")
RELEASES: Final = ("glc24", "geoplant")

#: Lock file in DEST: sha256, size and origin of every file this tool fetched.
LOCK_FILE: Final = "geoplant.lock.json"
#: Hidden folder in DEST for extraction markers and Kaggle staging.
STATE_DIR: Final = ".geoplant"
#: Environment variable overriding the Kaggle kernel input root (default ``/kaggle/input``).
KAGGLE_INPUT_ENV: Final = "GEOPLANT_KAGGLE_INPUT"
DEFAULT_KAGGLE_INPUT: Final = "/kaggle/input"

_CHUNK: Final = 256 * 1024
_RETRY_STATUS: Final = frozenset({408, 425, 429, 500, 502, 503, 504})
_SEAFILE_SHARE = re.compile(r"/(seafile/)?d/[0-9a-f]{8,}/?$")


# ------------------------------------------------------------------------------- results


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
    """What `download` found and did."""

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
            out.append(f"{p.name:<36} {_human(p.size, p.size_approx):>11}  {p.status:<22} "
                       f"{p.method} {p.origin}".rstrip())
        known = sum(p.size or 0 for p in self.parts)
        unknown = sum(p.size is None for p in self.parts)
        approx = any(p.size_approx for p in self.parts)
        ready = [p for p in self.parts if p.status in ("present", "mounted", "downloaded")]
        todo = [p for p in self.parts if p not in ready]
        todo_size = sum(p.size or 0 for p in todo)
        tail = f" + {unknown} part(s) of unknown size" if unknown else ""
        out.append(f"total: {len(self.parts)} part(s), {_human(known, approx)}{tail}")
        out.append(f"present and verified (or mounted): {len(ready)} part(s); "
                   f"{'to fetch' if self.dry_run else 'not fetched'}: {len(todo)} part(s), "
                   f"{_human(todo_size, approx)}")
        if not self.dry_run:
            out.append(f"fetched this run: {_human(self.fetched_bytes, False)} into {self.dest}")
        if self.kaggle_credentials is False:
            out.append("note: Kaggle credentials not found (set KAGGLE_USERNAME and KAGGLE_KEY, "
                       "or put kaggle.json in ~/.kaggle/)")
        return out


def _human(n: int | None, approx: bool) -> str:
    if n is None:
        return "unknown"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            text = f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
            return ("~" if approx else "") + text
        value /= 1024
    raise AssertionError  # pragma: no cover


# ------------------------------------------------------------------------------- lock file


class _Lock:
    """``DEST/geoplant.lock.json``: thread-safe, written atomically after every change."""

    def __init__(self, dest: Path, release: str, *, write: bool) -> None:
        self.path = dest / LOCK_FILE
        self._write = write
        self._mutex = threading.Lock()
        self.files: dict[str, dict[str, Any]] = {}
        if self.path.is_file():
            try:
                data = json.loads(self.path.read_text(encoding="utf-8"))
                self.files = dict(data.get("files", {}))
            except (OSError, ValueError):
                self.files = {}  # a damaged lock only costs re-hashing

        self.release = release

    def get(self, path: str) -> dict[str, Any] | None:
        with self._mutex:
            return self.files.get(path)

    def record(self, path: str, target: Path, **info: Any) -> None:
        st = target.stat()
        entry = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, **info,
                 "recorded": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")}
        with self._mutex:
            self.files[path] = entry
            if self._write:
                data = {"version": 1, "release": self.release, "files": self.files}
                _atomic_write(self.path, json.dumps(data, indent=1, sort_keys=True) + "\n")


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


# ------------------------------------------------------------------------------- planning


@dataclass
class _Plan:
    part: Part
    method: str  # kaggle | http | mounted
    origin: str
    source: Source | None = None
    part_source: PartSource | None = None
    urls: dict[str, str] = field(default_factory=dict)  # file path -> URL (http)
    mounted: Path | None = None
    files: dict[str, FileResult] = field(default_factory=dict)


def _kaggle_input_root() -> Path:
    return Path(os.environ.get(KAGGLE_INPUT_ENV) or DEFAULT_KAGGLE_INPUT)


def _mounted_path(catalog: Catalog, part: Part) -> tuple[Source, PartSource, Path] | None:
    """Where a Kaggle kernel mounts this part, when it does."""
    for name, ps in part.sources.items():
        src = catalog.sources[name]
        mount = src.kaggle_mount
        if mount is None:
            continue
        base = _kaggle_input_root() / mount
        if ps.bundle and base.is_dir():
            return src, ps, base
        if ps.file and (base / ps.file).exists():
            return src, ps, base / ps.file
    return None


def _mirror_kind(url: str) -> str:
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


def _plan_part(catalog: Catalog, part: Part, source: SourceChoice, mirror: str | None) -> _Plan:
    if source in ("auto", "kaggle"):
        mounted = _mounted_path(catalog, part)
        if mounted is not None:
            src, ps, path = mounted
            return _Plan(part, "mounted", str(path), src, ps, mounted=path)
    kaggle = [(catalog.sources[n], ps) for n, ps in part.sources.items()
              if catalog.sources[n].is_kaggle]
    http = [(catalog.sources[n], ps) for n, ps in part.sources.items()
            if not catalog.sources[n].is_kaggle]
    if source == "auto":
        first = catalog.sources[next(iter(part.sources))]
        use_http = mirror is not None or not first.is_kaggle
    else:
        use_http = source == "http"
    if use_http:
        if mirror is not None:
            kind = _mirror_kind(mirror)
            urls = {f.path: file_url(mirror, f.path, kind) for f in part.files}
            return _Plan(part, "http", mirror, urls=urls)
        if not http:
            raise GeoplantError(
                f"part {part.name!r} is served only by Kaggle in the catalog",
                fix="use --source kaggle, or --mirror URL for an HTTP copy of the release")
        src, ps = http[0]
        assert src.url is not None
        remote = {f.path: (ps.path if ps.path and len(part.files) == 1 else f.path)
                  for f in part.files}
        urls = {p: file_url(src.url, r, "seafile" if src.type == "seafile" else "http")
                for p, r in remote.items()}
        return _Plan(part, "http", src.url, src, ps, urls=urls)
    if not kaggle:
        raise GeoplantError(
            f"part {part.name!r} has no Kaggle source (sources: {', '.join(part.sources)})",
            fix="use --source http (or --source auto)")
    src, ps = kaggle[0]
    return _Plan(part, "kaggle", f"{src.type.removeprefix('kaggle-')} {src.ref}", src, ps)


def _check_file(target: Path, pf: PartFile, lock: _Lock, *, verify: bool) -> FileResult:
    """State of one file already in DEST (no network)."""
    res = FileResult(pf.path, "missing", pf.size)
    partial = target.with_name(target.name + ".part")
    if not target.is_file():
        if partial.is_file():
            res.status = "partial"
            res.fetched_bytes = 0
            res.size = partial.stat().st_size
        return res
    st = target.stat()
    if pf.exact_size is not None and st.st_size != pf.exact_size:
        res.status = "unverified"
        return res
    entry = lock.get(pf.path)
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
    sha = _sha256_file(target)
    if expected is not None and sha != expected:
        res.status = "unverified"
        return res
    res.status, res.size, res.sha256 = "present", st.st_size, sha
    if entry is None or entry.get("sha256") != sha or entry.get("mtime_ns") != st.st_mtime_ns:
        lock.record(pf.path, target, sha256=sha, source=(entry or {}).get("source", "local"))
    return res


# ------------------------------------------------------------------------------- destination


def _check_dest(dest: Path, *, create: bool) -> None:
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


# ------------------------------------------------------------------------------- HTTP


class _Retryable(Exception):
    pass


def _session() -> requests.Session:
    import requests

    session = requests.Session()
    session.headers["User-Agent"] = "geoplant-downloader"
    return session


def _fetch_http(session: requests.Session, url: str, target: Path, pf: PartFile,
                expected_sha: str | None, *, retries: int, backoff: float, timeout: float,
                progress: Callable[[int], None]) -> tuple[str, int]:
    """Stream ``url`` into ``target`` via ``target.part``; return (sha256, bytes transferred)."""
    import requests

    partial = target.with_name(target.name + ".part")
    target.parent.mkdir(parents=True, exist_ok=True)
    transferred = 0
    attempt = 0

    def failed(problem: str) -> None:
        nonlocal attempt
        attempt += 1
        if attempt > retries:
            raise GeoplantError(f"{problem} (gave up after {retries} retries; the partial file "
                                f"is kept)", path=target, fix="rerun the same command to resume")
        time.sleep(min(backoff * 2 ** (attempt - 1), 60.0))

    while True:
        have = partial.stat().st_size if partial.is_file() else 0
        hasher = hashlib.sha256()
        if have:
            with open(partial, "rb") as fh:  # resume the hash over the bytes already on disk
                while chunk := fh.read(1 << 20):
                    hasher.update(chunk)
        headers = {"Range": f"bytes={have}-"} if have else {}
        try:
            with session.get(url, headers=headers, stream=True, timeout=timeout) as resp:
                if resp.status_code == 416 and have:
                    partial.unlink()  # the partial is not a prefix of the remote file
                    continue
                if resp.status_code in _RETRY_STATUS:
                    raise _Retryable(f"HTTP {resp.status_code}")
                if resp.status_code >= 400:
                    raise GeoplantError(f"HTTP {resp.status_code} {resp.reason} for {url}",
                                        path=target, fix="check --mirror and the part name")
                mode, total = "wb", None
                if resp.status_code == 206 and have:
                    m = re.match(r"bytes (\d+)-\d+/(\d+|\*)", resp.headers.get("Content-Range", ""))
                    if not m or int(m.group(1)) != have:
                        partial.unlink()
                        continue
                    mode = "ab"
                    total = None if m.group(2) == "*" else int(m.group(2))
                else:
                    have, hasher = 0, hashlib.sha256()
                    length = resp.headers.get("Content-Length")
                    encoded = "Content-Encoding" in resp.headers  # length is of encoded bytes
                    total = int(length) if length and not encoded else None
                if pf.exact_size is not None and total is not None and total != pf.exact_size:
                    raise GeoplantError(
                        f"server has {total} bytes for {pf.path}, the catalog says {pf.exact_size}",
                        path=target, fix="check that --mirror serves this release")
                with open(partial, mode) as out:
                    for chunk in resp.iter_content(_CHUNK):
                        out.write(chunk)
                        hasher.update(chunk)
                        transferred += len(chunk)
                        progress(len(chunk))
            size = partial.stat().st_size
            if total is not None and size != total:
                raise _Retryable(f"connection closed at byte {size} of {total}")
        except (requests.ConnectionError, requests.Timeout,
                requests.exceptions.ChunkedEncodingError, _Retryable) as err:
            failed(f"download of {url} interrupted: {type(err).__name__}: {err}")
            continue
        except OSError as err:
            raise GeoplantError(f"cannot write ({err.strerror or err})", path=partial,
                                fix="free disk space or choose another --dest") from None
        sha = hasher.hexdigest()
        bad = _mismatch(pf.exact_size, expected_sha, size, sha)
        if bad:
            partial.unlink()  # corrupt: start over from byte 0
            failed(f"downloaded {pf.path} is corrupt: {bad}")
            continue
        os.replace(partial, target)
        return sha, transferred


# ------------------------------------------------------------------------------- Kaggle


def kaggle_credentials_present() -> bool:
    """Whether the kaggle client would find credentials (env vars or a config file)."""
    env = os.environ
    if env.get("KAGGLE_USERNAME") and env.get("KAGGLE_KEY"):
        return True
    if env.get("KAGGLE_API_TOKEN"):
        return True
    home = Path.home()
    dirs = [Path(env["KAGGLE_CONFIG_DIR"])] if env.get("KAGGLE_CONFIG_DIR") else [
        home / ".kaggle", Path(env.get("XDG_CONFIG_HOME") or home / ".config") / "kaggle"]
    for d in dirs:
        with contextlib.suppress(OSError, ValueError):
            cfg = json.loads((d / "kaggle.json").read_text())
            if cfg.get("username") and cfg.get("key"):
                return True
        for name in ("access_token", "access_token.txt"):
            with contextlib.suppress(OSError):
                if (d / name).read_text().strip():
                    return True
    with contextlib.suppress(OSError, ValueError):
        if json.loads((home / ".kaggle" / "credentials.json").read_text()).get("refresh_token"):
            return True
    return False


_NO_CREDENTIALS = GeoplantError(
    "Kaggle credentials not found",
    fix="set the environment variables KAGGLE_USERNAME and KAGGLE_KEY, or save kaggle.json "
        "(kaggle.com > Settings > API > Create New Token) as ~/.kaggle/kaggle.json; or use "
        "--source http with a mirror",
)


def _kaggle_api() -> Any:
    if not kaggle_credentials_present():
        raise _NO_CREDENTIALS
    # Importing kaggle authenticates at import time and prints help on failure: keep it quiet.
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        from kaggle.api.kaggle_api_extended import KaggleApi

        api = KaggleApi()
        # kaggle reads KAGGLE_API_ENVIRONMENT once, at import; honour its current value.
        if os.environ.get("KAGGLE_API_ENVIRONMENT") == "LOCALHOST" and "--local" not in api.args:
            api.args = [*api.args, "--local"]
        try:
            api.authenticate()
        except SystemExit:
            raise _NO_CREDENTIALS from None
    return api


def _kaggle_error(err: Exception, plan: _Plan, target: Path) -> GeoplantError:
    status = getattr(getattr(err, "response", None), "status_code", None)
    ref = plan.source.ref if plan.source else "?"
    if status == 401:
        return GeoplantError("Kaggle rejected the credentials (HTTP 401)", path=target,
                             fix="check KAGGLE_USERNAME/KAGGLE_KEY or kaggle.json")
    if status == 403:
        return GeoplantError(f"Kaggle refused access to {ref} (HTTP 403)", path=target,
                             fix=f"accept the rules/terms of {ref} on kaggle.com, then rerun")
    if status == 404:
        name = plan.part_source.file if plan.part_source and plan.part_source.file else ""
        return GeoplantError(f"not found on Kaggle: {ref} {name}", path=target,
                             fix="check the catalog entry")
    return GeoplantError(f"Kaggle download failed: {type(err).__name__}: {err}", path=target,
                         fix="rerun to resume; check the network")


def _fetch_kaggle(api: Any, plan: _Plan, dest: Path, pf: PartFile, expected_sha: str | None,
                  *, quiet: bool) -> tuple[str, int]:
    """Fetch a Kaggle file or bundle into ``dest / pf.path``; return (sha256, bytes written)."""
    src, ps = plan.source, plan.part_source
    assert src is not None and ps is not None and src.ref is not None
    target = dest / pf.path
    staging = dest / STATE_DIR / "kaggle" / plan.part.name
    staging.mkdir(parents=True, exist_ok=True)
    competition = src.type == "kaggle-competition"
    try:
        with contextlib.redirect_stdout(io.StringIO()) if quiet else contextlib.nullcontext():
            if competition and ps.bundle:
                api.competition_download_files(src.ref, path=str(staging), quiet=quiet)
            elif competition:
                api.competition_download_file(src.ref, ps.file, path=str(staging), quiet=quiet)
            elif ps.bundle:
                api.dataset_download_files(src.ref, path=str(staging), quiet=quiet, unzip=False)
            else:
                api.dataset_download_file(src.ref, ps.file, path=str(staging), quiet=quiet)
    except GeoplantError:
        raise
    except Exception as err:  # the kaggle client raises requests/urllib3/ValueError alike
        raise _kaggle_error(err, plan, target) from None
    produced = [p for p in staging.iterdir()
                if p.is_file() and not p.name.endswith(".kaggle-partial")]
    want = (src.ref.rsplit("/", 1)[-1] + ".zip") if ps.bundle else Path(ps.file or "").name
    got = next((p for p in produced if p.name == want), None)
    zipped = next((p for p in produced if p.name == want + ".zip"), None)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".part")
    if got is not None:
        os.replace(got, partial)
    elif zipped is not None:  # Kaggle serves some single files zipped
        import zipfile

        with zipfile.ZipFile(zipped) as zf, zf.open(zf.namelist()[0]) as fin, \
                open(partial, "wb") as fout:
            shutil.copyfileobj(fin, fout, 1 << 20)
        zipped.unlink()
    else:
        raise GeoplantError(f"Kaggle download produced {[p.name for p in produced]}, "
                            f"expected {want}", path=staging, fix="report this catalog entry")
    sha, size = _sha256_file(partial), partial.stat().st_size
    bad = _mismatch(pf.exact_size, expected_sha, size, sha)
    if bad:
        partial.unlink()
        raise GeoplantError(f"Kaggle file is corrupt: {bad}", path=target, fix="rerun to re-fetch")
    os.replace(partial, target)
    shutil.rmtree(staging, ignore_errors=True)
    return sha, size


# ------------------------------------------------------------------------------- mounted parts


def _link_mounted(plan: _Plan, dest: Path) -> None:
    """Expose a part mounted under /kaggle/input inside DEST through symlinks (no copy)."""
    assert plan.mounted is not None
    if plan.part_source is not None and plan.part_source.bundle:
        pairs = [(dest / child.name, child) for child in plan.mounted.iterdir()]
    else:
        pairs = [(dest / plan.part.path, plan.mounted)]
    for link, target in pairs:
        if link.exists() or link.is_symlink():
            continue
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(target, target_is_directory=target.is_dir())


# ------------------------------------------------------------------------------- extraction


class _ConcatReader(io.RawIOBase):
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


def _safe_extract(zf: Any, out: Path) -> None:
    root = out.resolve()
    for member in zf.infolist():
        resolved = (root / member.filename).resolve()
        if resolved != root and root not in resolved.parents:
            raise GeoplantError(f"archive member escapes the destination: {member.filename}",
                                path=out, fix="do not extract this archive")
    zf.extractall(root)


def _extract(part: Part, dest: Path, lock: _Lock) -> bool:
    """Unzip an archive part once; return whether it extracted now (False: marker up to date)."""
    import zipfile

    marker = dest / STATE_DIR / "extracted" / f"{part.name}.json"
    fingerprint = {f.path: (lock.get(f.path) or {}).get("sha256") for f in part.files}
    if marker.is_file():
        with contextlib.suppress(OSError, ValueError):
            if json.loads(marker.read_text()).get("files") == fingerprint:
                return False
    out = dest / part.extract_dir
    out.mkdir(parents=True, exist_ok=True)
    paths = [dest / f.path for f in part.files]
    try:
        if part.volume_format == "split":
            with _ConcatReader(paths) as raw, io.BufferedReader(raw) as buf, \
                    zipfile.ZipFile(buf) as zf:  # type: ignore[arg-type]
                _safe_extract(zf, out)
        else:
            for p in paths:
                with zipfile.ZipFile(p) as zf:
                    _safe_extract(zf, out)
    except zipfile.BadZipFile as err:
        raise GeoplantError(f"not a valid zip archive ({err})", path=paths[0],
                            fix="delete it and rerun to download it again") from None
    marker.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(marker, json.dumps({"part": part.name, "into": part.extract_dir,
                                      "files": fingerprint}, indent=1) + "\n")
    return True


# ------------------------------------------------------------------------------- public API


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
        that stays corrupt or unreachable after the retries.
    """
    from geoplant.catalog import Catalog as _Catalog
    from geoplant.catalog import load_catalog

    if source not in SOURCES:
        raise GeoplantError(f"unknown source {source!r}", fix="use kaggle, http or auto")
    if jobs < 1:
        raise GeoplantError(f"jobs must be at least 1, not {jobs}", fix="pass --jobs 1 or more")
    if mirror is not None and urllib.parse.urlsplit(mirror).scheme not in ("http", "https"):
        raise GeoplantError(f"mirror must be an http(s) URL, not {mirror!r}",
                            fix="pass --mirror https://host/path")
    if isinstance(catalog, _Catalog):
        cat = catalog
    else:
        cat = load_catalog(catalog if catalog is not None else release)
    if isinstance(parts, str):
        parts = [parts]
    parts = list(parts) if parts is not None else None
    if not parts and not dry_run:
        raise GeoplantError(
            f"no part named (release {cat.release!r} has {len(cat.parts)} parts)",
            fix=f"list them with 'geoplant download --release {cat.release} --dry-run', then "
                "name parts or globs (or 'all')")
    selected = cat.select(parts or None)
    dest_path = Path(dest if dest is not None else Path("data") / cat.release).expanduser()
    _check_dest(dest_path, create=not dry_run)
    lock = _Lock(dest_path, cat.release, write=not dry_run)

    plans = [_plan_part(cat, p, source, mirror) for p in selected]
    needs_kaggle = False
    for plan in plans:
        if plan.method == "mounted":
            continue
        for pf in plan.part.files:
            plan.files[pf.path] = _check_file(dest_path / pf.path, pf, lock, verify=verify)
        if any(r.status != "present" for r in plan.files.values()) and plan.method == "kaggle":
            needs_kaggle = True
    creds = kaggle_credentials_present() if needs_kaggle else None

    if dry_run:
        results = [_dry_result(plan) for plan in plans]
        return DownloadReport(cat.release, dest_path, True, results, creds)

    api = _kaggle_api() if needs_kaggle else None
    results = _execute(plans, dest_path, lock, api, retries=retries, backoff=backoff,
                       timeout=timeout, jobs=jobs, progress=progress)
    if extract:
        for plan, res in zip(plans, results, strict=True):
            if plan.part.is_archive and plan.method != "mounted":
                res.extracted = _extract(plan.part, dest_path, lock)
    return DownloadReport(cat.release, dest_path, False, results, creds)


def _dry_result(plan: _Plan) -> PartResult:
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
        res.status = f"partial ({_human(have, False)})"
    elif "unverified" in states:
        res.status = "present, unverified"
    else:
        res.status = "missing"
    return res


def _execute(plans: list[_Plan], dest: Path, lock: _Lock, api: Any, *, retries: int,
             backoff: float, timeout: float, jobs: int, progress: bool) -> list[PartResult]:
    from tqdm.auto import tqdm

    results: list[PartResult] = []
    tasks: list[tuple[_Plan, PartFile, FileResult]] = []
    for plan in plans:
        part = plan.part
        res = PartResult(part.name, "present", plan.method, plan.origin, part.size,
                         part.size_approx)
        results.append(res)
        if plan.method == "mounted":
            _link_mounted(plan, dest)
            res.status = "mounted"
            continue
        for pf in part.files:
            fres = plan.files[pf.path]
            res.files.append(fres)
            if fres.status != "present":
                tasks.append((plan, pf, fres))
    todo = sum(pf.size or 0 for _, pf, _ in tasks)
    bar = tqdm(total=todo or None, unit="B", unit_scale=True, unit_divisor=1024,
               desc="download", disable=not progress or not tasks, file=sys.stderr)
    bar_mutex = threading.Lock()

    def advance(n: int) -> None:
        with bar_mutex:
            bar.update(n)

    session = _session() if any(plan.method == "http" for plan, _, _ in tasks) else None

    def run_one(task: tuple[_Plan, PartFile, FileResult]) -> None:
        plan, pf, fres = task
        target = dest / pf.path
        entry = lock.get(pf.path)
        expected = pf.sha256 or (entry or {}).get("sha256")
        if plan.method == "http":
            assert session is not None
            url = plan.urls[pf.path]
            sha, n = _fetch_http(session, url, target, pf, expected, retries=retries,
                                 backoff=backoff, timeout=timeout, progress=advance)
            fres.url = url
        else:
            sha, n = _fetch_kaggle(api, plan, dest, pf, expected, quiet=not progress)
            advance(n)
            url = plan.origin
        fres.status, fres.sha256, fres.fetched_bytes = "fetched", sha, n
        fres.size = target.stat().st_size
        lock.record(pf.path, target, sha256=sha, source=plan.method, url=url, part=plan.part.name)

    try:
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            futures = [pool.submit(run_one, t) for t in tasks]
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


def _mismatch(exact_size: int | None, expected_sha: str | None, size: int,
              sha: str) -> str | None:
    """Why a fetched file disagrees with its expected size or sha256, or None if it agrees."""
    if exact_size is not None and size != exact_size:
        return f"size {size} != catalog size {exact_size}"
    if expected_sha is not None and sha != expected_sha:
        return f"sha256 {sha[:12]}… != expected {expected_sha[:12]}…"
    return None


# ------------------------------------------------------------------------------- CLI


def _int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer >= ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}: {value}")
        return value

    return parse


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add the ``geoplant download`` options to ``parser``."""
    parser.epilog = ("Parts are catalog names or globs (quote them: 's24-rasters-*'); 'all' is "
                     "every part. List them with --dry-run. Kaggle needs KAGGLE_USERNAME and "
                     "KAGGLE_KEY or ~/.kaggle/kaggle.json.")
    parser.add_argument("parts", nargs="*", metavar="PART", help="part names or globs, or 'all'")
    parser.add_argument("--dest", metavar="DIR", default=None,
                        help="release root to download into (default: data/<release>)")
    parser.add_argument("--release", choices=RELEASES, default="glc24",
                        help="which release catalog (default: glc24)")
    parser.add_argument("--catalog", metavar="FILE", default=None,
                        help="use this catalog YAML instead of --release")
    parser.add_argument("--source", choices=SOURCES, default="auto",
                        help="kaggle, http or auto (default: auto)")
    parser.add_argument("--mirror", metavar="URL", default=None,
                        help="HTTP(S) base URL of a copy of the release, or a Seafile share link")
    parser.add_argument("--dry-run", action="store_true",
                        help="list parts, sizes, total and what is present; fetch nothing")
    parser.add_argument("--extract", action="store_true", help="unzip archive parts once")
    parser.add_argument("--jobs", type=_int_at_least(1), default=4, metavar="N",
                        help="files fetched in parallel (default: 4)")
    parser.add_argument("--verify", action="store_true",
                        help="re-hash present files instead of trusting the lock file")
    parser.add_argument("--retries", type=_int_at_least(0), default=5, metavar="N",
                        help="HTTP retries per file (default: 5)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    """Run ``geoplant download``; return the exit code."""
    report = download(
        args.parts or None, dest=args.dest, release=args.release, source=args.source,
        mirror=args.mirror, dry_run=args.dry_run, extract=args.extract, jobs=args.jobs,
        verify=args.verify, retries=args.retries, progress=not args.no_progress,
        catalog=args.catalog,
    )
    if report.dry_run:
        print(f"release {report.release} -> {report.dest} (dry run: nothing fetched)")
    for line in report.lines():
        print(line)
    return 0
