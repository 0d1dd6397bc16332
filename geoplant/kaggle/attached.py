"""The data a notebook uses on Kaggle: an attached store, or a store built from the attached
raw release.

A Kaggle notebook starts with what its user attached under ``/kaggle/input``: usually the
competition data (``geolifeclef-2024``, the unzipped competition tree, read-only) or the
GeoPlant dataset, sometimes a store published with ``geoplant kaggle publish``.
:func:`resolve_data` is what a notebook's ``data = None`` means:

1. ``data`` when given (a store folder or URL), returned as is;
2. else a store attached under the input root: the first, in path order, holding the
   modalities asked for (with ``modalities=None``, the first);
3. else, when a raw release is attached, a store built from it into the working folder
   (``/kaggle/working/geoplant-store``), once: later calls of the session reuse it, and a call
   needing modalities it lacks rebuilds it with the old and the new ones. A second notebook
   finding the build running waits for it (the build's store lock), up to :data:`LOCK_WAIT_S`;
4. else (an attached store lacking modalities, and no raw release) that store;
5. else a one-line :class:`~geoplant.errors.GeoplantError` saying what to attach.

Stores and releases are searched :data:`SEARCH_DEPTH` levels deep (an attached dataset and a
few folders inside it); a release is recognised by :func:`geoplant.raw.detect_layout`.
Environment: ``GEOPLANT_KAGGLE_INPUT`` overrides ``/kaggle/input``, ``GEOPLANT_KAGGLE_WORKING``
overrides ``/kaggle/working``. Built stores have no rasters (the real ones are ~40 GB of
zipped GeoTIFFs, and no baseline needs them).
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Final

from geoplant.errors import GeoplantError
from geoplant.files import pid_alive

__all__ = [
    "INPUT_ENV",
    "LOCK_WAIT_S",
    "SEARCH_DEPTH",
    "STORE_NAME",
    "WORKING_ENV",
    "find_attached_release",
    "find_attached_store",
    "resolve_data",
]

#: Environment variable overriding the input root (default ``/kaggle/input``).
INPUT_ENV: Final = "GEOPLANT_KAGGLE_INPUT"
#: Environment variable overriding the writable working root (default ``/kaggle/working``).
WORKING_ENV: Final = "GEOPLANT_KAGGLE_WORKING"
_DEFAULT_INPUT: Final = "/kaggle/input"
_DEFAULT_WORKING: Final = "/kaggle/working"
#: The store built from an attached release, under the working root.
STORE_NAME: Final = "geoplant-store"
#: How deep under the input root stores and releases are looked for (1: the attached datasets).
SEARCH_DEPTH: Final = 4
#: How long a notebook waits for another one building the same store (seconds).
LOCK_WAIT_S: float = 3600.0
#: How often a waiting notebook looks at the lock again (seconds).
_POLL_S: Final = 2.0
_ATTACH_FIX: Final = ("attach the competition data (Add Input > Competitions > geolifeclef-2024), "
                      "the GeoPlant dataset, or a store published with `geoplant kaggle "
                      "publish`; elsewhere, pass the store folder as `data`")


def resolve_data(data: str | os.PathLike[str] | None, *,
                 modalities: Sequence[str] | None = None,
                 input_root: str | os.PathLike[str] | None = None,
                 working_root: str | os.PathLike[str] | None = None) -> str:
    """The store a notebook uses: ``data``, an attached store, or one built from attached data.

    Parameters
    ----------
    data
        Store folder or URL; when given it is returned as is (nothing is looked for).
    modalities
        Per-survey modalities the notebook needs (``sentinel2``, ``sentinel2_tiff``,
        ``landsat``, ``climate``, ``env``); ``None``: every one the release has. A store
        built here always holds ``env`` too (small, used by the classic baselines).
    input_root
        Where datasets are attached (default: ``$GEOPLANT_KAGGLE_INPUT`` or ``/kaggle/input``).
    working_root
        Writable folder for a built store (default: ``$GEOPLANT_KAGGLE_WORKING`` or
        ``/kaggle/working``); the store is ``<working_root>/geoplant-store``.

    Returns
    -------
    str
        The store's folder (or ``data``).

    Raises
    ------
    GeoplantError
        One line: nothing attached (what to attach), an unknown modality or one the release
        lacks, a working folder that cannot be written, another build still running after
        :data:`LOCK_WAIT_S`, or any error of the build itself.
    """
    if data:
        return str(data)
    wanted = _requested(modalities)
    inputs = _root(input_root, INPUT_ENV, _DEFAULT_INPUT)
    if not inputs.is_dir():
        raise GeoplantError(f"no data given and no Kaggle input folder ({inputs})",
                            fix="pass the store folder (parameter `data`), e.g. one built by "
                                "`geoplant build`; on Kaggle, attach the competition data")
    stores, releases = _scan(inputs)
    for store in stores:
        if wanted is None or _covers(_read_manifest(store) or {}, wanted):
            return str(store)
    if releases:
        working = _root(working_root, WORKING_ENV, _DEFAULT_WORKING)
        return str(_ensure_store(releases[0].resolve(), working, wanted))
    if stores:  # lacks some modality, but it is all there is: the notebook will say which
        return str(stores[0])
    raise GeoplantError(f"no data given and nothing usable attached under {inputs} (no geoplant "
                        f"store and no GeoLifeCLEF 2024 / GeoPlant release within "
                        f"{SEARCH_DEPTH} levels)", fix=_ATTACH_FIX)


def find_attached_store(root: str | os.PathLike[str]) -> Path | None:
    """The first geoplant store under ``root`` (path order), or ``None``.

    A store is a folder whose ``manifest.json`` is a geoplant store manifest; folders are
    searched :data:`SEARCH_DEPTH` levels deep, ``root`` included.
    """
    stores, _releases = _scan(Path(root))
    return stores[0] if stores else None


def find_attached_release(root: str | os.PathLike[str]) -> Path | None:
    """The first raw release root under ``root`` (path order), or ``None``.

    A release root is a folder :func:`geoplant.raw.detect_layout` recognises (the unzipped
    competition tree, or the folder holding ``GeoPlantData/``), searched
    :data:`SEARCH_DEPTH` levels deep, ``root`` included.
    """
    _stores, releases = _scan(Path(root))
    return releases[0] if releases else None


# ---------------------------------------------------------------------------------------------
# finding what is attached


def _root(given: str | os.PathLike[str] | None, env: str, default: str) -> Path:
    """``given``, else the environment variable, else the Kaggle default."""
    return Path(given if given is not None else os.environ.get(env) or default).expanduser()


def _scan(root: Path) -> tuple[list[Path], list[Path]]:
    """Stores and release roots under ``root``, each sorted by path.

    Breadth first, :data:`SEARCH_DEPTH` levels deep; neither a store nor a release is
    entered (a release holds ~10^5 per-survey files), nor is a hidden folder.
    """
    stores: list[Path] = []
    releases: list[Path] = []
    level = [root] if root.is_dir() else []
    for depth in range(SEARCH_DEPTH + 1):
        deeper: list[Path] = []
        for folder in level:
            if _read_manifest(folder) is not None:
                stores.append(folder)
            elif _is_release(folder):
                releases.append(folder)
            elif depth < SEARCH_DEPTH:
                deeper.extend(_subfolders(folder))
        level = deeper
    return sorted(stores), sorted(releases)


def _subfolders(folder: Path) -> list[Path]:
    """The visible subfolders of ``folder`` (none if it cannot be listed)."""
    try:
        with os.scandir(folder) as entries:
            return [Path(e.path) for e in entries
                    if not e.name.startswith(".") and _is_dir(e)]
    except OSError:
        return []


def _is_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False


def _read_manifest(folder: Path) -> dict[str, Any] | None:
    """The geoplant store manifest in ``folder``, or ``None`` (none, unreadable or another's)."""
    path = folder / "manifest.json"
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or \
            not str(manifest.get("format", "")).startswith("geoplant-store"):
        return None
    return manifest


def _is_release(folder: Path) -> bool:
    """Whether ``folder`` is the root of a raw release (either layout)."""
    from geoplant.raw import detect_layout

    try:
        detect_layout(folder)
    except GeoplantError:
        return False
    return True


# ---------------------------------------------------------------------------------------------
# what a store must hold


def _requested(modalities: Sequence[str] | str | None) -> list[str] | None:
    """The modalities asked for, checked, in the build's order (``None``: all)."""
    from geoplant.builder import MODALITIES

    if modalities is None:
        return None
    names = [modalities] if isinstance(modalities, str) else list(modalities)
    unknown = [m for m in names if m not in MODALITIES]
    if unknown:
        raise GeoplantError(f"unknown modality {', '.join(map(repr, unknown))}",
                            fix=f"use some of: {', '.join(MODALITIES)}")
    return [m for m in MODALITIES if m in names]


def _built(manifest: dict[str, Any]) -> set[str]:
    """Modalities a store holds for at least one split."""
    per_split = manifest.get("modalities")
    if not isinstance(per_split, dict):
        return set()
    return {m for names in per_split.values() if isinstance(names, list) for m in names}


def _covers(manifest: dict[str, Any], modalities: Iterable[str]) -> bool:
    return set(modalities) <= _built(manifest)


def _available(release: Path) -> list[str]:
    """Modalities the release's PA splits have files for, in the build's order."""
    from geoplant.builder import MODALITIES
    from geoplant.raw import RawRelease

    with RawRelease(release) as raw:
        families = {f for split in raw.splits if split != "po_train"
                    for f in raw.families(split)}
    return [m for m, spec in MODALITIES.items() if spec["family"] in families]


def _needed(release: Path, wanted: list[str] | None) -> list[str]:
    """What the store must hold: ``wanted`` (``None``: all), each one the release has."""
    available = _available(release)
    if wanted is None:
        return available
    missing = [m for m in wanted if m not in available]
    if missing:
        raise GeoplantError(f"the attached release has no {', '.join(missing)} data",
                            path=release, fix=f"use some of: {', '.join(available)}")
    return wanted


# ---------------------------------------------------------------------------------------------
# the store built in the working folder


def _ensure_store(release: Path, working: Path, wanted: list[str] | None) -> Path:
    """A complete store of ``release`` in ``working`` holding ``wanted``: reused or built."""
    from geoplant.builder import build

    need = _needed(release, wanted)
    store = _store_folder(working)
    deadline = time.monotonic() + LOCK_WAIT_S
    while True:
        _wait_for_lock(store, deadline)
        if _usable(store, release, need):
            return store
        modalities, overwrite, why = _plan(store, release, need)
        print(f"geoplant: {why} {store} from the attached release {release} (modalities: "
              f"{', '.join(modalities)}; later notebooks of this session reuse it)", flush=True)
        try:
            build(release, store, modalities=modalities, rasters=False, overwrite=overwrite)
        except GeoplantError:
            if _lock_held(store):  # another notebook started the same build first
                continue
            if _usable(store, release, need):  # ... and has just finished it
                return store
            raise
        return store


def _store_folder(working: Path) -> Path:
    """``<working>/geoplant-store``, created; a one-line error if it cannot be written."""
    store = working / STORE_NAME
    fix = f"set {WORKING_ENV} to a writable folder (e.g. /tmp), or pass the store as `data`"
    try:
        store.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise GeoplantError(f"cannot create the store folder ({err.strerror or err})",
                            path=store, fix=fix) from None
    if not os.access(store, os.W_OK | os.X_OK):
        raise GeoplantError("the store folder is not writable", path=store, fix=fix)
    return store


def _usable(store: Path, release: Path, need: list[str]) -> bool:
    """Whether ``store`` is complete, built from ``release`` and holds ``need``."""
    manifest = _complete_manifest(store)
    return manifest is not None and manifest.get("raw_root") == str(release) \
        and _covers(manifest, need)


def _complete_manifest(store: Path) -> dict[str, Any] | None:
    """The manifest of a complete store (no ``_build/`` left), or ``None``."""
    if (store / "_build").exists():
        return None
    return _read_manifest(store)


def _plan(store: Path, release: Path, need: list[str]) -> tuple[list[str], bool, str]:
    """What to build into ``store``: (modalities, overwrite, what it is for the message).

    A store of the same release keeps what it holds (a rebuild adds the new modalities);
    an interrupted build with the settings this one would use is resumed.
    """
    from geoplant.builder import LOCK_NAME

    entries = {p.name for p in store.iterdir()} - {LOCK_NAME}
    if not entries:
        return _with_env(release, need), False, "building the store"
    manifest = _read_manifest(store)
    if manifest is not None and not (store / "_build").exists():
        if manifest.get("raw_root") != str(release):
            return _with_env(release, need), True, "replacing another release's store in"
        return _with_env(release, need, _built(manifest)), True, \
            "rebuilding, with more modalities, the store"
    if "_build" not in entries:
        raise GeoplantError("the folder holds other files, not a geoplant store", path=store,
                            fix=f"move them away, or set {WORKING_ENV} to another folder")
    saved = _interrupted_modalities(store, release)
    if saved is not None and set(need) <= set(saved):
        return saved, False, "resuming the interrupted build of the store"
    return _with_env(release, need, saved or ()), True, "rebuilding the interrupted store"


def _with_env(release: Path, need: Iterable[str], held: Iterable[str] = ()) -> list[str]:
    """``need``, what the store already ``held``, and ``env``: those the release has."""
    chosen = set(need) | set(held) | {"env"}
    return [m for m in _available(release) if m in chosen]


def _interrupted_modalities(store: Path, release: Path) -> list[str] | None:
    """The modalities of an interrupted build this module would resume, else ``None``.

    It is resumable when its ``_build/settings.json`` equals what :func:`_ensure_store`
    passes to the build (this release, all splits, the default block size).
    """
    from geoplant.builder import BLOCK_SURVEYS
    from geoplant.raw import RawRelease

    try:
        saved = json.loads((store / "_build" / "settings.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(saved, dict) or not isinstance(saved.get("modalities"), list):
        return None
    with RawRelease(release) as raw:
        splits = list(raw.splits)
    expected = {"raw": str(release), "splits": splits, "modalities": saved["modalities"],
                "block_surveys": BLOCK_SURVEYS}
    return list(saved["modalities"]) if saved == expected else None


# ---------------------------------------------------------------------------------------------
# another notebook building the same store


def _wait_for_lock(store: Path, deadline: float) -> None:
    """Return once no build holds ``store``'s lock; a one-line error after the deadline."""
    told = False
    while _lock_held(store):
        left = deadline - time.monotonic()
        holder = _holder(store)
        if left <= 0:
            raise GeoplantError(f"another build ({holder}) is still writing the store after "
                                f"{LOCK_WAIT_S:.0f} s", path=store,
                                fix="wait for the other notebook to finish and rerun, or stop "
                                    "it and rerun: the build resumes")
        if not told:
            print(f"geoplant: another build ({holder}) is writing {store}; waiting for it",
                  flush=True)
            told = True
        time.sleep(min(_POLL_S, left))


def _lock_held(store: Path) -> bool:
    """Whether a live build holds ``store``'s lock.

    A build keeps its lock file ``flock``-ed: a shared lock that cannot be taken means a
    live holder; a free one, a stale file the next build takes over. Without flock (some
    network file systems), whether the holder's pid lives on this host.
    """
    import fcntl

    from geoplant.builder import LOCK_NAME

    path = store / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return _holder_alive(path)
    finally:
        os.close(fd)  # also drops the shared lock, if taken
    return False


def _lock_info(store: Path) -> dict[str, Any]:
    """The lock file's content (pid, host, start), or ``{}``."""
    from geoplant.builder import LOCK_NAME

    try:
        info = json.loads((store / LOCK_NAME).read_text())
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def _holder(store: Path) -> str:
    """Who holds the lock, for a message."""
    info = _lock_info(store)
    if not info:
        return "unknown holder"
    return f"pid {info.get('pid')} on {info.get('host')}, since {info.get('started')}"


def _holder_alive(path: Path) -> bool:
    """Whether the lock's holder is a live process of this host."""
    info = _lock_info(path.parent)
    pid = info.get("pid")
    if info.get("host") != socket.gethostname() or not isinstance(pid, int):
        return bool(info)  # another host's lock: its pid means nothing here; assume live
    return pid_alive(pid)
