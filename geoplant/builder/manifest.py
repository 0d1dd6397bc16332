"""What describes a finished store: the species table (``species.parquet``), the sources read
(sizes, sha256), the training-split statistics (``stats.json``) and ``manifest.json``."""

from __future__ import annotations

import contextlib
import hashlib
import json
import platform
from collections.abc import Iterable, Sequence
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from geoplant import __version__
from geoplant.builder.spec import CHUNK_SURVEYS, ENV_FAMILIES, MODALITIES
from geoplant.builder.storefiles import write_store_file
from geoplant.files import sha256_file

__all__ = ["make_manifest", "source_entries", "species_table", "write_manifest",
           "write_species", "write_statistics"]


# ---------------------------------------------------------------------------------------------
# sources


def source_entries(raw: Any, splits: Sequence[str],
                   modalities: Sequence[str]) -> list[dict[str, Any]]:
    """Each source file with size and sha256; per-survey files summarised per folder/archive."""
    entries: list[dict[str, Any]] = []
    wanted = _source_families(modalities)
    for key in raw.source_paths(splits, wanted):  # as found: zipped or extracted
        path = Path(raw.root) / key
        if not path.exists():
            continue
        if path.is_dir():
            entries.append(_folder_entry(path, key))
        else:
            entries.append({"path": key, "kind": "file", "bytes": path.stat().st_size,
                            "sha256": sha256_file(path)})
    return entries


def _source_families(modalities: Iterable[str]) -> set[str]:
    """Raw families a build reads: metadata, the env values, and each modality's files."""
    families = {"metadata.po", "metadata.pa"} | {f"env.{f}" for f in ENV_FAMILIES}
    families |= {MODALITIES[m]["family"] for m in modalities if m != "env"}
    if "sentinel2" in modalities:
        families.add("s2.nir")  # the 4-band patches pair the RGB and NIR JPEGs
    return families


def _folder_entry(path: Path, key: str) -> dict[str, Any]:
    """A folder of per-survey files, summarised: count, bytes and sha256 of its listing."""
    files = sorted(p for p in path.rglob("*") if p.is_file())
    listing = hashlib.sha256()  # names and sizes, not contents: cheap on 100k's of files
    for p in files:
        listing.update(f"{p.relative_to(path)}\0{p.stat().st_size}\n".encode())
    return {"path": key, "kind": "folder", "files": len(files),
            "bytes": sum(p.stat().st_size for p in files), "listing_sha256": listing.hexdigest()}


# ---------------------------------------------------------------------------------------------
# species and statistics


def species_table(counts: dict[str, pd.Series]) -> pd.DataFrame:
    """speciesId <-> label column index, with record counts per split (sorted by speciesId)."""
    ids: Iterable[Any] = sorted(set().union(*(set(c.index) for c in counts.values())))
    table = pd.DataFrame({"speciesId": np.asarray(list(ids), dtype=np.int32)})
    table.insert(0, "index", np.arange(len(table), dtype=np.int32))
    for split, c in counts.items():
        if len(c):
            table[f"n_{split}"] = c.reindex(table["speciesId"]).fillna(0).astype(
                np.int64).to_numpy()
    return table


def write_species(store: Path, counts: dict[str, pd.Series]) -> pd.DataFrame:
    """Write ``species.parquet`` (:func:`species_table` of ``counts``); return the table."""
    species = species_table(counts)
    write_store_file(store / "species.parquet", lambda tmp: species.to_parquet(tmp, index=False))
    return species


def write_statistics(store: Path) -> None:
    """Training-split statistics, stored once and reused for every split (never test data)."""
    from geoplant.stats import compute_normalization_stats

    compute_normalization_stats(store, "pa_train", write=True)


# ---------------------------------------------------------------------------------------------
# manifest


def make_manifest(layout: str, raw_root: str, splits: list[str],
                  cube_modalities: dict[str, list[str]], block_surveys: int,
                  counts: dict[str, int], skipped: list[dict[str, Any]],
                  raster_names: list[str], sources: list[dict[str, Any]],
                  stats_written: bool, po_env_source: str | None = None,
                  po_env_without_raster: Sequence[str] = ()) -> dict[str, Any]:
    """The store's ``manifest.json`` content (keys in the order they are written).

    ``po_env_source`` says where ``po_train``'s env cube came from: ``"tables"`` (the
    release's PO env tables), ``"rasters"`` (sampled at the PO surveys) or ``None`` (no PO
    env cube); ``po_env_without_raster`` the PO env columns left NaN, no raster holding them.
    """
    return {
        "format": "geoplant-store/1",
        "created_by": f"geoplant {__version__}",
        "layout": layout,
        "raw_root": raw_root,
        "splits": splits,
        "modalities": cube_modalities,
        "block_surveys": block_surveys,
        "chunk_surveys": CHUNK_SURVEYS,
        "counts": counts,
        "skipped": {"total": len(skipped), "items": skipped},
        "rasters": raster_names,
        "po_env_source": po_env_source,
        "po_env_columns_without_raster": list(po_env_without_raster),
        "normalization_stats": "stats.json" if stats_written else None,
        "sources": sources,
        "versions": _versions(),
    }


def write_manifest(store: Path, manifest: dict[str, Any]) -> None:
    """Write ``manifest.json`` (numpy scalars as plain numbers)."""
    text = json.dumps(manifest, indent=1, default=_json_default) + "\n"
    write_store_file(store / "manifest.json", lambda tmp: tmp.write_text(text))


def _versions() -> dict[str, str]:
    """Versions of geoplant, Python and the libraries that shape a store's bytes."""
    out = {"geoplant": __version__, "python": platform.python_version()}
    for name in ("numpy", "pandas", "pyarrow", "xarray", "zarr", "dask", "distributed",
                 "geopandas", "rasterio", "rioxarray", "torch"):
        with contextlib.suppress(importlib_metadata.PackageNotFoundError):
            out[name] = importlib_metadata.version(name)
    return out


def _json_default(value: Any) -> Any:
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    raise TypeError(type(value))
