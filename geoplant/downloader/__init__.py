"""``geoplant download``: fetch the parts of a release from Kaggle or an HTTP(S) mirror.

What a run does, part by part (parts come from `geoplant.catalog`):

1. In a Kaggle kernel, a part already mounted under ``/kaggle/input`` (override the root with
   ``GEOPLANT_KAGGLE_INPUT``) is linked into DEST, not downloaded.
2. A part present in DEST and verified is skipped. Verified means: its sha256 matches the
   catalog, or else the one recorded in ``DEST/geoplant.lock.json`` by the run that fetched it
   (a size + mtime match with the lock skips re-hashing; ``verify=True`` forces it); with no
   checksum at all, an exact catalog size. A file whose size is not the size its source
   announced (recorded in the lock), or is far from an approximate catalog size (outside
   0.5x-2x, unless accepted with ``accept_size``), is never present.
3. Otherwise it is fetched: through the ``kaggle`` package's Python API (no prompt, no shell),
   or over HTTP(S) with streaming, ``Range`` + ``If-Range`` resume of an interrupted ``.part``
   file, retries with exponential backoff, sha256 computed while streaming, an atomic rename.
   Each file is checked against the catalog (sha256, exact size, approximate size band) and
   what the source announced (``Content-Length``/``Content-Range`` size, ETag, the storage's
   md5), and recorded with the latter. Files are fetched in parallel (``jobs``).
4. With ``extract=True`` archives (multi-volume too) are unzipped once; a marker in
   ``DEST/.geoplant/extracted/`` records each finished extraction, so re-runs skip it.

Modules: ``plan`` (which source serves each part, URLs), ``mount`` (``/kaggle/input``),
``expect`` (what a file must be: catalog checks, what the source announced, the size band),
``lockfile`` (the lock file, present/verified checks), ``http`` and ``kaggle`` (fetching),
``extract`` (unzipping), ``report`` (results), ``core`` (`download`), ``cli`` (the command).
No third-party package loads on import: ``requests``, ``tqdm`` and ``kaggle`` load when needed.
"""

from geoplant.downloader.cli import RELEASES, configure_parser, run
from geoplant.downloader.core import download
from geoplant.downloader.kaggle import kaggle_credentials_present
from geoplant.downloader.lockfile import LOCK_FILE, STATE_DIR
from geoplant.downloader.mount import DEFAULT_KAGGLE_INPUT, KAGGLE_INPUT_ENV
from geoplant.downloader.plan import SOURCES, SourceChoice, file_url
from geoplant.downloader.report import DownloadReport, FileResult, PartResult

__all__ = [
    "DEFAULT_KAGGLE_INPUT",
    "KAGGLE_INPUT_ENV",
    "LOCK_FILE",
    "RELEASES",
    "SOURCES",
    "STATE_DIR",
    "DownloadReport",
    "FileResult",
    "PartResult",
    "SourceChoice",
    "configure_parser",
    "download",
    "file_url",
    "kaggle_credentials_present",
    "run",
]
