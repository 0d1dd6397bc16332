"""Parts a Kaggle kernel already has under ``/kaggle/input``: found, then linked into DEST.

The input root is ``/kaggle/input`` unless ``GEOPLANT_KAGGLE_INPUT`` names another folder
(tests, or a local copy laid out the same way).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from geoplant.catalog import Catalog, Part, PartSource, Source
    from geoplant.downloader.plan import PartPlan

__all__ = ["DEFAULT_KAGGLE_INPUT", "KAGGLE_INPUT_ENV", "kaggle_input_root", "link_mounted",
           "mounted_path"]

#: Environment variable overriding the Kaggle kernel input root (default ``/kaggle/input``).
KAGGLE_INPUT_ENV: Final = "GEOPLANT_KAGGLE_INPUT"
DEFAULT_KAGGLE_INPUT: Final = "/kaggle/input"


def kaggle_input_root() -> Path:
    """The folder Kaggle kernels mount their inputs under."""
    return Path(os.environ.get(KAGGLE_INPUT_ENV) or DEFAULT_KAGGLE_INPUT)


def mounted_path(catalog: Catalog, part: Part) -> tuple[Source, PartSource, Path] | None:
    """Where a Kaggle kernel mounts this part, when it does."""
    for name, ps in part.sources.items():
        src = catalog.sources[name]
        mount = src.kaggle_mount
        if mount is None:
            continue
        base = kaggle_input_root() / mount
        if ps.bundle and base.is_dir():
            return src, ps, base
        if ps.file and (base / ps.file).exists():
            return src, ps, base / ps.file
    return None


def link_mounted(plan: PartPlan, dest: Path) -> None:
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
