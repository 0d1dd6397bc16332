"""Fetch parts through the ``kaggle`` package's Python API: credentials, a quiet authenticated
client, its errors turned into one-line `GeoplantError`s, and one file or bundle fetched into
DEST through a staging folder.

What each download announces (``Content-Length``, ETag, Last-Modified, the ``x-goog-hash`` md5
of the storage it comes from) is caught where the client decides whether to download
(``KaggleApi.download_needed`` sees every response before it is streamed): a size outside the
catalog's band stops the download before it starts, and the staged file is checked against
the announced size and digest, then recorded with them. (The file listings,
``competition_list_files``, also give sizes, but page through every file of a competition,
hundreds of thousands of patches for GLC24; the response being streamed is the authority.)

``import kaggle`` here is the pip package (absolute import), not :mod:`geoplant.kaggle`; it is
imported on first use only, because importing it authenticates.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from geoplant.downloader.expect import Expected, Fetched, Remote, digest_file
from geoplant.downloader.lockfile import STATE_DIR, partial_path
from geoplant.errors import GeoplantError

if TYPE_CHECKING:
    from geoplant.catalog import PartSource, Source
    from geoplant.downloader.plan import PartPlan

__all__ = ["NO_CREDENTIALS", "fetch_kaggle", "kaggle_api", "kaggle_credentials_present",
           "kaggle_error"]

NO_CREDENTIALS = GeoplantError(
    "Kaggle credentials not found",
    fix="set the environment variables KAGGLE_USERNAME and KAGGLE_KEY, or save kaggle.json "
        "(kaggle.com > Settings > API > Create New Token) as ~/.kaggle/kaggle.json; or use "
        "--source http with a mirror",
)


def kaggle_credentials_present() -> bool:
    """Whether the kaggle client would find credentials (env vars or a config file)."""
    env = os.environ
    if env.get("KAGGLE_USERNAME") and env.get("KAGGLE_KEY"):
        return True
    if env.get("KAGGLE_API_TOKEN"):
        return True
    if any(_config_has_credentials(d) for d in kaggle_config_dirs()):
        return True
    with contextlib.suppress(OSError, ValueError):
        credentials = Path.home() / ".kaggle" / "credentials.json"
        if json.loads(credentials.read_text()).get("refresh_token"):
            return True
    return False


def kaggle_config_dirs() -> list[Path]:
    """Where the kaggle client looks for ``kaggle.json``: ``KAGGLE_CONFIG_DIR``, else
    ``~/.kaggle`` and ``$XDG_CONFIG_HOME/kaggle``."""
    env, home = os.environ, Path.home()
    if env.get("KAGGLE_CONFIG_DIR"):
        return [Path(env["KAGGLE_CONFIG_DIR"])]
    return [home / ".kaggle", Path(env.get("XDG_CONFIG_HOME") or home / ".config") / "kaggle"]


def _config_has_credentials(folder: Path) -> bool:
    """Whether ``folder`` holds a complete ``kaggle.json`` or a non-empty access token."""
    with contextlib.suppress(OSError, ValueError):
        cfg = json.loads((folder / "kaggle.json").read_text())
        if cfg.get("username") and cfg.get("key"):
            return True
    for name in ("access_token", "access_token.txt"):
        with contextlib.suppress(OSError):
            if (folder / name).read_text().strip():
                return True
    return False


def kaggle_api() -> Any:
    """An authenticated ``kaggle.api.kaggle_api_extended.KaggleApi``.

    Raises
    ------
    GeoplantError
        When no credentials are found or the client refuses them.
    """
    api = authenticated_api(NO_CREDENTIALS)
    _DOWNLOADS.watch(api)
    return api


def authenticated_api(missing: GeoplantError) -> Any:
    """A quiet, authenticated ``KaggleApi``; ``missing`` is raised without credentials.

    Honours ``KAGGLE_API_ENVIRONMENT=LOCALHOST`` at call time (the client reads it once, at
    import), which the tests use to reach a stand-in of the API on 127.0.0.1.
    """
    if not kaggle_credentials_present():
        raise missing
    # Importing kaggle authenticates at import time and prints help on failure: keep it quiet.
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        from kaggle.api.kaggle_api_extended import KaggleApi

        api = KaggleApi()
        if os.environ.get("KAGGLE_API_ENVIRONMENT") == "LOCALHOST" and "--local" not in api.args:
            api.args = [*api.args, "--local"]
        try:
            api.authenticate()
        except SystemExit:
            raise missing from None
    return api


_Check = Callable[[str, Remote], None]


class _Downloads:
    """What the kaggle client's downloads announce, by output file, and the checks to run on
    it before a byte is downloaded (by staging folder). Thread-safe: parts are fetched in
    parallel through one client."""

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._announced: dict[str, Remote] = {}
        self._checks: dict[str, _Check] = {}

    def watch(self, api: Any) -> None:
        """Wrap ``api.download_needed``, which the client calls with each download's response
        (headers read, body not yet) before it streams it."""
        original = api.download_needed

        def download_needed(response: Any, outfile: str, *args: Any, **kwargs: Any) -> Any:
            path = os.path.abspath(outfile)
            remote = Remote.from_headers(response.headers)
            with self._mutex:
                self._announced[path] = remote
                check = self._checks.get(os.path.dirname(path))
            if check is not None:
                check(os.path.basename(path), remote)
            return original(response, outfile, *args, **kwargs)

        api.download_needed = download_needed

    @contextlib.contextmanager
    def checking(self, staging: Path, check: _Check) -> Iterator[None]:
        """Run ``check(file name, announced)`` on each download into ``staging``."""
        key = os.path.abspath(staging)
        with self._mutex:
            self._checks[key] = check
        try:
            yield
        finally:
            with self._mutex:
                self._checks.pop(key, None)

    def pop(self, path: Path) -> Remote:
        """What the download into ``path`` announced (empty if it was not watched)."""
        with self._mutex:
            return self._announced.pop(os.path.abspath(path), Remote())


_DOWNLOADS = _Downloads()


def kaggle_error(err: Exception, plan: PartPlan, target: Path) -> GeoplantError:
    """The one-line error for an exception the kaggle client raised while fetching ``plan``."""
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


def fetch_kaggle(api: Any, plan: PartPlan, dest: Path, expected: Expected, *,
                 quiet: bool) -> Fetched:
    """Fetch a Kaggle file or bundle into ``dest / expected.file.path``.

    The client downloads into ``DEST/.geoplant/kaggle/<part>/``; the file is then moved (or
    unzipped, for a single file Kaggle serves zipped) to ``<target>.part``, checked against
    ``expected`` and what the download announced (size, md5), and renamed into place.

    Returns
    -------
    Fetched
        The sha256 of the file, its size (the bytes written) and what Kaggle announced.

    Raises
    ------
    GeoplantError
        On a client error, an unexpected download, an announced size the catalog rules out
        (before downloading), or a corrupt file (deleted).
    """
    src, ps = plan.source, plan.part_source
    assert src is not None and ps is not None and src.ref is not None
    target = dest / expected.file.path
    staging = dest / STATE_DIR / "kaggle" / plan.part.name
    staging.mkdir(parents=True, exist_ok=True)
    want = _staged_name(src, ps)
    try:
        with _DOWNLOADS.checking(staging, _announced_check(expected, want, target)):
            _download_to(api, src, ps, staging, quiet=quiet)
    except GeoplantError:
        raise
    except Exception as err:  # the kaggle client raises requests/urllib3/ValueError alike
        raise kaggle_error(err, plan, target) from None
    partial = partial_path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remote = _take_staged(staging, want, partial, target)
    (sha, md5), size = digest_file(partial, md5=remote.md5 is not None), partial.stat().st_size
    bad = expected.mismatch(size, sha, remote, md5)
    if bad:
        partial.unlink()
        raise GeoplantError(f"Kaggle file {expected.file.path} failed its check ({bad}) and "
                            "was deleted", path=target,
                            fix="rerun the same command to download it again")
    band = expected.band_error(size, path=target, what="Kaggle sent",
                               kept="the file received was deleted")
    if band is not None:
        partial.unlink()
        raise band
    os.replace(partial, target)
    shutil.rmtree(staging, ignore_errors=True)
    return Fetched(sha, size, remote)


def _announced_check(expected: Expected, want: str, target: Path) -> _Check:
    """The check of a download's announced size, before it starts: the catalog's exact size,
    or its approximate size band (not for a file Kaggle wraps in a zip: that size is the
    zip's)."""

    def check(name: str, remote: Remote) -> None:
        pf = expected.file
        if name != want or remote.size is None:
            return
        if pf.exact_size is not None and remote.size != pf.exact_size:
            raise GeoplantError(
                f"Kaggle announces {remote.size} bytes for {pf.path}, the catalog says "
                f"{pf.exact_size}; nothing was downloaded", path=target,
                fix="check the catalog entry")
        band = expected.band_error(remote.size, path=target, what="Kaggle announces",
                                   kept="nothing was downloaded")
        if band is not None:
            raise band

    return check


def _download_to(api: Any, src: Source, ps: PartSource, staging: Path, *, quiet: bool) -> None:
    """Ask the client for the competition/dataset file or bundle, into ``staging``."""
    assert src.ref is not None
    competition = src.type == "kaggle-competition"
    with contextlib.redirect_stdout(io.StringIO()) if quiet else contextlib.nullcontext():
        if competition and ps.bundle:
            api.competition_download_files(src.ref, path=str(staging), quiet=quiet)
        elif competition:
            api.competition_download_file(src.ref, ps.file, path=str(staging), quiet=quiet)
        elif ps.bundle:
            api.dataset_download_files(src.ref, path=str(staging), quiet=quiet, unzip=False)
        else:
            api.dataset_download_file(src.ref, ps.file, path=str(staging), quiet=quiet)


def _staged_name(src: Source, ps: PartSource) -> str:
    """The name the client gives the file or bundle it downloads."""
    assert src.ref is not None
    return (src.ref.rsplit("/", 1)[-1] + ".zip") if ps.bundle else Path(ps.file or "").name


def _take_staged(staging: Path, want: str, partial: Path, target: Path) -> Remote:
    """Move the file the client left in ``staging`` to ``partial`` (unzipping it if Kaggle
    served a single file zipped); return what its download announced (for an unzipped file:
    the size the zip records for it, whose CRC-32 the unzipping checks)."""
    produced = [p for p in staging.iterdir()
                if p.is_file() and not p.name.endswith(".kaggle-partial")]
    got = next((p for p in produced if p.name == want), None)
    zipped = next((p for p in produced if p.name == want + ".zip"), None)
    if got is not None:
        remote = _DOWNLOADS.pop(got)
        os.replace(got, partial)
        return remote
    if zipped is None:
        raise GeoplantError(f"Kaggle download produced {[p.name for p in produced]}, "
                            f"expected {want}", path=staging, fix="report this catalog entry")
    import zipfile

    remote = _DOWNLOADS.pop(zipped)
    try:
        return _unzip_single(zipped, remote, partial)
    except (zipfile.BadZipFile, EOFError, ValueError, IndexError) as err:
        partial.unlink(missing_ok=True)
        zipped.unlink(missing_ok=True)
        raise GeoplantError(f"Kaggle file {want} (served zipped) is corrupt ({err}); it was "
                            "deleted", path=target,
                            fix="rerun the same command to download it again") from None


def _unzip_single(zipped: Path, remote: Remote, partial: Path) -> Remote:
    """Unzip the one member of ``zipped`` to ``partial``, checking the zip's announced size
    first; return the member's announced size (the zip's record; zipfile checks its CRC)."""
    import zipfile

    size = zipped.stat().st_size
    if remote.size is not None and size != remote.size:
        raise ValueError(f"zip size {size} != the {remote.size} bytes Kaggle announced")
    with zipfile.ZipFile(zipped) as zf:
        info = zf.infolist()[0]
        with zf.open(info) as fin, open(partial, "wb") as fout:
            shutil.copyfileobj(fin, fout, 1 << 20)
    zipped.unlink()
    return Remote(info.file_size, remote.etag, remote.last_modified)
