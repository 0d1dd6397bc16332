"""Rasters: each environmental raster of the release copied into ``rasters.zarr/<name>``,
spatially chunked, with its CRS; resumable per raster, a damaged one skipped (or fatal)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Final

from geoplant.builder.skips import Skips
from geoplant.builder.tasks import compute_and_wait
from geoplant.errors import GeoplantError
from geoplant.files import atomic_write_text

__all__ = ["write_rasters"]

#: Pixels per side of a raster's chunks in the store.
_TILE: Final = 512


def write_rasters(raw: Any, target: Path, progress: bool, skips: Skips) -> list[str]:
    """Copy every raster (resumable per raster); the names written, in layout order.

    A skipped raster gets no marker, so a rerun tries it again.
    """
    from tqdm.auto import tqdm

    done_dir = target.parent / "_build" / "rasters"
    done_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name in tqdm(raw.raster_names(), desc="rasters", disable=not progress):
        marker = done_dir / f"{name}.done"
        if not marker.exists():
            if not _write_raster(raw, target, name, skips):
                continue
            atomic_write_text(marker, "done")
        written.append(name)
    return written


def _write_raster(raw: Any, target: Path, name: str, skips: Skips) -> bool:
    """Copy one raster into ``rasters.zarr/<name>``; a damaged one is skipped (or fatal).

    Opening is lazy: the pixels are read while copying, so the copy is what validates them.
    """
    import xarray as xr

    try:
        array = raw.raster(name, chunks={"x": _TILE, "y": _TILE})
    except GeoplantError as err:
        skips.add("rasters", "raster", err.problem, file=err.path)
        return False
    ds = xr.Dataset({name: array.rename(None)})
    ds[name].encoding = {}
    ds = ds.chunk({"x": _TILE, "y": _TILE})
    try:
        compute_and_wait([ds.to_zarr(str(target), group=name, mode="w", zarr_format=3,
                                     consolidated=False, compute=False)], None)
    except Exception as exc:
        damaged = raw.raster_read_error(name, exc)
        if damaged is None:  # not the raster's fault (e.g. a full disk): let it through
            raise
        shutil.rmtree(target / name, ignore_errors=True)  # what was copied before the damage
        skips.add("rasters", "raster", damaged.problem, file=damaged.path)
        return False
    return True
