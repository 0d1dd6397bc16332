"""Fetch parts through the ``kaggle`` package's Python API: credentials, a quiet authenticated
client, its errors turned into one-line `GeoplantError`s, and one file or bundle fetched into
DEST through a staging folder.

``import kaggle`` here is the pip package (absolute import), not :mod:`geoplant.kaggle`; it is
imported on first use only, because importing it authenticates.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from geoplant.downloader.lockfile import STATE_DIR, mismatch, partial_path
from geoplant.errors import GeoplantError
from geoplant.files import sha256_file

if TYPE_CHECKING:
    from geoplant.catalog import PartFile, PartSource, Source
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
    home = Path.home()
    dirs = [Path(env["KAGGLE_CONFIG_DIR"])] if env.get("KAGGLE_CONFIG_DIR") else [
        home / ".kaggle", Path(env.get("XDG_CONFIG_HOME") or home / ".config") / "kaggle"]
    if any(_config_has_credentials(d) for d in dirs):
        return True
    with contextlib.suppress(OSError, ValueError):
        if json.loads((home / ".kaggle" / "credentials.json").read_text()).get("refresh_token"):
            return True
    return False


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
    if not kaggle_credentials_present():
        raise NO_CREDENTIALS
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
            raise NO_CREDENTIALS from None
    return api


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


def fetch_kaggle(api: Any, plan: PartPlan, dest: Path, pf: PartFile, expected_sha: str | None,
                 *, quiet: bool) -> tuple[str, int]:
    """Fetch a Kaggle file or bundle into ``dest / pf.path``.

    The client downloads into ``DEST/.geoplant/kaggle/<part>/``; the file is then moved (or
    unzipped, for a single file Kaggle serves zipped) to ``<target>.part``, verified against
    ``pf``'s exact size and ``expected_sha``, and renamed into place.

    Returns
    -------
    tuple[str, int]
        The sha256 of the file and its size (the bytes written).

    Raises
    ------
    GeoplantError
        On a client error, an unexpected download, or a corrupt file.
    """
    src, ps = plan.source, plan.part_source
    assert src is not None and ps is not None and src.ref is not None
    target = dest / pf.path
    staging = dest / STATE_DIR / "kaggle" / plan.part.name
    staging.mkdir(parents=True, exist_ok=True)
    try:
        _download_to(api, src, ps, staging, quiet=quiet)
    except GeoplantError:
        raise
    except Exception as err:  # the kaggle client raises requests/urllib3/ValueError alike
        raise kaggle_error(err, plan, target) from None
    partial = partial_path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    _take_staged(staging, src, ps, partial)
    sha, size = sha256_file(partial), partial.stat().st_size
    bad = mismatch(pf.exact_size, expected_sha, size, sha)
    if bad:
        partial.unlink()
        raise GeoplantError(f"Kaggle file is corrupt: {bad}", path=target, fix="rerun to re-fetch")
    os.replace(partial, target)
    shutil.rmtree(staging, ignore_errors=True)
    return sha, size


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


def _take_staged(staging: Path, src: Source, ps: PartSource, partial: Path) -> None:
    """Move the file the client left in ``staging`` to ``partial`` (unzipping it if Kaggle
    served a single file zipped)."""
    assert src.ref is not None
    produced = [p for p in staging.iterdir()
                if p.is_file() and not p.name.endswith(".kaggle-partial")]
    want = (src.ref.rsplit("/", 1)[-1] + ".zip") if ps.bundle else Path(ps.file or "").name
    got = next((p for p in produced if p.name == want), None)
    zipped = next((p for p in produced if p.name == want + ".zip"), None)
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

