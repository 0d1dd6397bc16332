"""The official ``kaggle`` client (kaggle >= 2: ``KaggleApi`` over ``kagglesdk``), made quiet,
authenticated without prompts, and with its exceptions turned into one-line errors.

``import kaggle`` here is the pip package (absolute import), not :mod:`geoplant.kaggle`.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from collections.abc import Iterator
from typing import Any

from geoplant.errors import GeoplantError

CREDENTIALS_FIX = ("set the environment variables KAGGLE_USERNAME and KAGGLE_KEY, or save "
                   "kaggle.json (kaggle.com > Settings > API > Create New Token) as "
                   "~/.kaggle/kaggle.json")


def credentials_present() -> bool:
    """Whether the kaggle client would find credentials (env vars or a config file)."""
    from geoplant.downloader import kaggle_credentials_present

    return kaggle_credentials_present()


def configured_username() -> str | None:
    """The Kaggle user name of the configured credentials (``KAGGLE_USERNAME`` or the
    ``username`` of ``kaggle.json``), without contacting Kaggle; ``None`` when unknown."""
    from geoplant.downloader.kaggle import kaggle_config_dirs

    if os.environ.get("KAGGLE_USERNAME"):
        return os.environ["KAGGLE_USERNAME"]
    for folder in kaggle_config_dirs():
        with contextlib.suppress(OSError, ValueError, AttributeError):
            name = json.loads((folder / "kaggle.json").read_text()).get("username")
            if name:
                return str(name)
    return None


def no_credentials(action: str) -> GeoplantError:
    """The error for a command that needs Kaggle credentials and has none."""
    return GeoplantError(f"Kaggle credentials not found (needed to {action})",
                         fix=CREDENTIALS_FIX + "; or add --dry-run to only write the files")


@contextlib.contextmanager
def quiet() -> Iterator[io.StringIO]:
    """Silence the client's prints (auth help, progress, 'Upload successful'); yields them."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        yield out


def kaggle_api(action: str) -> Any:
    """An authenticated ``kaggle.api.kaggle_api_extended.KaggleApi``, quiet, without prompts.

    Raises
    ------
    GeoplantError
        Without credentials, or when the client refuses them.
    """
    from geoplant.downloader.kaggle import authenticated_api

    return authenticated_api(no_credentials(action))


def http_status(err: BaseException) -> int | None:
    """The HTTP status of a client exception (``requests.HTTPError``), if any."""
    response = getattr(err, "response", None)
    status = getattr(response, "status_code", None)
    return status if isinstance(status, int) else None


def kaggle_error(err: Exception, action: str, *, path: str | os.PathLike[str] | None = None,
                 forbidden: str | None = None, not_found: str | None = None,
                 invalid: str | None = None,
                 fix: str = "rerun; check the network and kaggle.com's status") -> GeoplantError:
    """A one-line error for a failed client call.

    Parameters
    ----------
    err
        What the client raised (``requests.HTTPError``, ``ValueError``, a connection error).
    action
        What was being done, e.g. ``"create dataset me/x"``.
    path
        The local file or folder concerned.
    forbidden, not_found
        The fix for an HTTP 403 / 404 answer.
    invalid
        The fix for a ``ValueError`` of the client (its checks of the metadata files).
    fix
        The fix for any other failure.
    """
    status = http_status(err)
    detail = " ".join(str(err).split()) or type(err).__name__
    if status == 401:
        return GeoplantError(f"Kaggle rejected the credentials (HTTP 401) to {action}",
                             path=path, fix="check KAGGLE_USERNAME/KAGGLE_KEY or kaggle.json")
    if status == 403:
        return GeoplantError(f"Kaggle refused to {action} (HTTP 403: {detail})", path=path,
                             fix=forbidden or "check you have the rights on kaggle.com")
    if status == 404:
        return GeoplantError(f"not found on Kaggle while trying to {action} ({detail})",
                             path=path, fix=not_found or "check the name")
    if status is None and isinstance(err, ValueError) and invalid:
        fix = invalid
    what = f"HTTP {status}: {detail}" if status else f"{type(err).__name__}: {detail}"
    return GeoplantError(f"could not {action} ({what})", path=path, fix=fix)


def is_transient(err: BaseException) -> bool:
    """Whether a failed call is worth repeating: no HTTP answer, HTTP 429 or a 5xx."""
    status = http_status(err)
    if status is None:
        return isinstance(err, OSError)  # connection errors (requests' are OSErrors)
    return status == 429 or status >= 500
