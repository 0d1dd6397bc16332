"""Benchmark ``geoplant map``: cells/s, peak memory; projected to Europe, 1 km x 11,255 species.

A synthetic store (46 smooth env rasters on an EPSG:4326 grid, ~25 % sea) and an
env-logistic model of ``--species`` species fitted on random points are written to a temporary
folder; the whole grid is then mapped on local threads. Prints JSON::

    python benchmarks/maps.py [--size 768] [--species 100] [--workers 2]

Projection: prediction cost is linear in cells x species (one matrix product per block and
species chunk), so ``hours = 16e6 cells * 11,255 species / (measured cell-species/s per
process) / N`` for N such processes (same core count each); the disk size scales the measured
compressed bytes per cell-species.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

EUROPE_CELLS = 4_000 * 4_000
EUROPE_SPECIES = 11_255


def _fake_store(root: Path, size: int, seed: int = 0) -> list[str]:
    """A minimal store: manifest + rasters.zarr with the 46 GLC rasters (smooth fields)."""
    import rioxarray  # noqa: F401
    import xarray as xr
    from affine import Affine
    from scipy import ndimage

    from geoplant.layouts import raster_names

    rng = np.random.default_rng(seed)
    names = list(raster_names("glc24"))
    step = 40.0 / size
    x = -10 + step * (np.arange(size) + 0.5)
    y = 71 - step * (np.arange(size) + 0.5)
    coast = ndimage.gaussian_filter(rng.standard_normal((size, size)), size / 20)
    sea = coast < np.quantile(coast, 0.25)  # a quarter of the grid is nodata
    for name in names:
        field = ndimage.gaussian_filter(rng.standard_normal((size, size)), size / 30)
        field = (field / field.std()).astype(np.float32)
        field[sea] = np.nan
        da = xr.DataArray(field[None], dims=("band", "y", "x"),
                          coords={"band": [1], "y": y, "x": x}, name=name)
        da = da.rio.write_crs("EPSG:4326").rio.write_transform(
            Affine(step, 0, -10, 0, -step, 71))
        da.to_dataset().chunk({"y": 512, "x": 512}).to_zarr(
            root / "rasters.zarr", group=name, mode="w", zarr_format=3, consolidated=False)
    manifest = {"format": "geoplant-store/1", "created_by": "benchmark", "layout": "glc24",
                "splits": [], "modalities": {}, "counts": {}, "skipped": {"total": 0,
                                                                           "items": []},
                "rasters": names}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return names


def _model(folder: Path, n_species: int, seed: int = 0) -> None:
    from geoplant.layouts import ENV_COLUMNS
    from geoplant.models import EnvLogisticBaseline
    from geoplant.models.persist import save_model

    features = ["lon", "lat", *(c for cols in ENV_COLUMNS.values() for c in cols)]
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((2_000, len(features)))
    # species respond to a few features each, so maps vary like real ones (compression)
    W = rng.standard_normal((len(features), n_species)) * (rng.random((len(features),
                                                                      n_species)) < 0.1)
    Y = rng.random((2_000, n_species)) < 1 / (1 + np.exp(-(X @ W - 2.5)))
    model = EnvLogisticBaseline(max_iter=50).fit(X, Y)
    save_model(model, folder, species_ids=np.arange(n_species), feature_names=features)


def _du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print JSON."""
    from geoplant.maps import make_maps

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=768, help="grid side (cells)")
    parser.add_argument("--species", type=int, default=100)
    parser.add_argument("--workers", type=int, default=2, help="local threads")
    parser.add_argument("--block", type=int, default=256)
    parser.add_argument("--species-chunk", type=int, default=16)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="geoplant-maps-bench-") as tmp:
        root = Path(tmp)
        _fake_store(root / "store", args.size)
        _model(root / "model", args.species)
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        started = time.perf_counter()
        result = make_maps(root / "model", root / "store", root / "maps", species=[0],
                           workers=args.workers, block=args.block,
                           species_chunk=args.species_chunk, progress=False, quicklooks=False)
        total = time.perf_counter() - started
        peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        zarr_bytes = _du(root / "maps" / "probability.zarr")
    cells = result.cells
    cell_species_per_s = cells * args.species / result.seconds
    bytes_per_cell_species = zarr_bytes / (cells * args.species)
    europe_cs = EUROPE_CELLS * EUROPE_SPECIES
    hours_one = europe_cs / cell_species_per_s / 3600
    report = {
        "grid": [args.size, args.size], "cells": cells, "valid_cells": result.valid_cells,
        "species": args.species, "workers_threads": args.workers, "block": args.block,
        "species_chunk": args.species_chunk,
        "blocks_seconds": round(result.seconds, 2), "total_seconds": round(total, 2),
        "cells_per_s": round(cells / result.seconds, 1),
        "cell_species_per_s": round(cell_species_per_s, 1),
        "peak_rss_mib": round(peak_mib, 1),
        "peak_rss_mib_before_mapping": round(rss_before / 1024, 1),
        "zarr_bytes": zarr_bytes, "bytes_per_cell_species": round(bytes_per_cell_species, 4),
        "europe_1km": {
            "cells": EUROPE_CELLS, "species": EUROPE_SPECIES,
            "probability_zarr_gb": round(europe_cs * bytes_per_cell_species / 1e9, 1),
            "probability_uncompressed_gb": round(europe_cs / 1e9, 1),
            "hours_on_1_worker_like_this": round(hours_one, 1),
            "hours_on_16_workers": round(hours_one / 16, 2),
            "hours_on_64_workers": round(hours_one / 64, 2),
        },
        "python": sys.version.split()[0],
    }
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
