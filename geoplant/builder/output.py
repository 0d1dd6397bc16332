"""The ``--out`` folder: refused when it holds something else than a store, cleared under
``--overwrite``, rid of what killed builds left, resumed only with the same settings, and
finally marked complete.

A store is a folder with ``manifest.json`` (complete) or ``_build/`` (interrupted). ``_build/``
holds the markers of finished work and the build's settings; a finished build renames it away
in one step, then deletes it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any, Final

from geoplant.builder.lock import LOCK_NAME
from geoplant.builder.storefiles import read_json_dict
from geoplant.errors import GeoplantError
from geoplant.files import atomic_write_text, remove_stale_temporaries

__all__ = ["check_out", "clear_out", "finish", "prepare_store"]

#: What a finished build renames ``_build`` to before deleting it (the store is complete then).
_DONE_PREFIX: Final = "._build.tmp-"
#: Temporaries of zarr-python's local store (``<name>.<uuid4 hex>.partial``).
_ZARR_PARTIAL: Final = re.compile(r"\.[0-9a-f]{32}\.partial$")


def check_out(store: Path, raw_root: Path, overwrite: bool) -> None:
    """Refuse an ``--out`` that is a file, or a non-empty folder that holds no store.

    A store is a folder with ``manifest.json`` (complete) or ``_build/`` (interrupted);
    ``overwrite`` replaces anything but the raw release itself.
    """
    if store.exists() and not store.is_dir():
        raise GeoplantError("exists and is not a folder", path=store, fix="choose another --out")
    if overwrite and (store == raw_root or store in raw_root.parents):
        raise GeoplantError("--overwrite would delete the raw release", path=store,
                            fix="choose an --out outside the release")
    if overwrite or not store.is_dir():
        return
    entries = {p.name for p in store.iterdir()} - {LOCK_NAME}
    if entries and not entries & {"manifest.json", "_build"}:
        raise GeoplantError("folder is not empty and holds no geoplant store", path=store,
                            fix="choose a new or empty --out, or pass --overwrite to replace "
                                "what it holds")


def clear_out(store: Path) -> None:
    """Delete what ``store`` holds, but the lock this build holds (``--overwrite``)."""
    for entry in store.iterdir():
        if entry.name == LOCK_NAME:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def _remove_leftovers(store: Path) -> None:
    """Remove what killed builds left: their temporaries and zarr's partial chunks.

    Run under the lock, so no other writer owns any of them.
    """
    if not (store / "_build").exists():
        return  # a fresh or complete store: nothing of a killed build to find
    remove_stale_temporaries(store)
    for sub in ("cubes", "rasters.zarr"):
        for partial in (store / sub).rglob("*.partial"):
            if _ZARR_PARTIAL.search(partial.name):
                partial.unlink(missing_ok=True)


def prepare_store(store: Path, settings: dict[str, Any]) -> None:
    """Create the store's folders, or resume an interrupted build made with the same settings.

    A complete store (a manifest and no ``_build/``) is never overwritten.
    """
    for trash in store.glob(f"{_DONE_PREFIX}*"):  # a finished build killed while tidying up
        shutil.rmtree(trash, ignore_errors=True)
    if (store / "manifest.json").exists() and not (store / "_build").exists():
        raise GeoplantError("a complete store already exists here", path=store,
                            fix="choose another --out, or pass --overwrite to rebuild it")
    _remove_leftovers(store)
    for sub in ("_build", "records", "cubes"):  # _build first: it marks the folder a store
        (store / sub).mkdir(parents=True, exist_ok=True)
    settings_file = store / "_build" / "settings.json"
    saved = read_json_dict(settings_file) if settings_file.exists() else None
    if saved is not None and saved != settings:
        raise GeoplantError("an interrupted build with other settings is here", path=store,
                            fix=f"rerun it with the same options ({json.dumps(saved)}), or "
                                "pass --overwrite to start again")
    atomic_write_text(settings_file, json.dumps(settings))


def finish(store: Path) -> None:
    """Mark the store complete: ``_build`` renamed away in one step, then deleted."""
    trash = store / f"{_DONE_PREFIX}{os.getpid()}"
    os.replace(store / "_build", trash)
    shutil.rmtree(trash)
