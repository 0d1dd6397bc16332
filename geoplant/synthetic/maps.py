"""True probability maps of a synthetic world, and a synthetic conservation-status table.

The world (:mod:`geoplant.synthetic.world`) gives species ``s`` at a site the probability
``sigmoid(a_s - 0.5 * sum_k ((z_k - mu_sk) / sd_sk)**2 + beta_s[habitat])`` where some drivers
(local elevation noise, hidden habitat class, greenness, wetness) are drawn per site and are
not in any raster. The true probability of a *grid cell* is the expectation over those
site-level draws at the cell centre (a plot of the default 100 m², so no area effect):
:func:`truth_probability_map` estimates it by Monte Carlo with the world's own site sampler
(``World.sites``), ``draws`` sites per cell, with a fixed seed.

The world is rebuilt from ``truth/parameters.json`` (seed and preset) and checked against the
stored species parameters, so a changed generator is an error rather than a wrong map.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from geoplant.errors import GeoplantError
from geoplant.synthetic.truth import truth_folder

if TYPE_CHECKING:
    import xarray as xr

    from geoplant.synthetic.world import World

__all__ = ["STATUS_SHARES", "load_world", "synthetic_status_table", "truth_probability_map",
           "write_truth_maps"]

#: Shares of the rarest species (by true prevalence) given each status, rarest first.
STATUS_SHARES: tuple[tuple[str, float], ...] = (
    ("CR", 0.05), ("EN", 0.10), ("VU", 0.15), ("NT", 0.10))


def load_world(truth_dir: str | os.PathLike[str]) -> World:
    """Rebuild the world of a synthetic release from its ``truth/parameters.json``.

    Raises
    ------
    GeoplantError
        No parameters, or the rebuilt world's species differ from the stored ones.
    """
    from geoplant.synthetic.world import World

    folder = truth_folder(truth_dir)
    path = folder / "parameters.json"
    if not path.is_file():
        raise GeoplantError("no parameters.json in the truth folder", path=folder,
                            fix="regenerate the release with `geoplant sample`")
    params = json.loads(path.read_text())
    preset = params["preset"]
    world = World(int(params["seed"]), int(preset["n_species"]), float(preset["mean_richness"]))
    stored = params.get("species", [])
    ids = np.array([s["speciesId"] for s in stored], dtype=np.int64)
    intercepts = np.array([s["intercept"] for s in stored], dtype=np.float64)
    if not (np.array_equal(ids, world.species_ids)
            and np.allclose(intercepts, world.intercept, rtol=1e-6, atol=1e-9)):
        raise GeoplantError("the world rebuilt from parameters.json differs from the release's "
                            "(the generator changed since it was sampled)", path=path,
                            fix="regenerate the release with this geoplant version")
    return world


def truth_probability_map(truth_dir: str | os.PathLike[str],
                          species_ids: Sequence[int] | None = None, *, draws: int = 16,
                          seed: int = 0, bbox: Sequence[float] | None = None,
                          cells_per_step: int = 4096) -> xr.DataArray:
    """True occurrence probability of listed species on the world's grid (the store's grid).

    Parameters
    ----------
    truth_dir
        The release or its ``truth/`` folder.
    species_ids
        Species to map (default: all of the world's).
    draws
        Monte-Carlo site draws per cell to marginalise the hidden site variables (the standard
        error of a cell's probability is at most ``0.5 / sqrt(draws)``, usually far less).
    seed
        Seed of those draws.
    bbox
        ``(west, south, east, north)`` in degrees: cells whose centres fall inside.
    cells_per_step
        Cells evaluated together (memory: ``cells * draws * species`` float64).

    Returns
    -------
    xarray.DataArray
        float32 ``probability(species, y, x)``, NaN at sea, with CRS and transform.

    Raises
    ------
    GeoplantError
        Unknown species, a bbox without cells, or a world that cannot be rebuilt.
    """
    import rioxarray  # noqa: F401
    import xarray as xr
    from affine import Affine
    from scipy.special import expit

    from geoplant.synthetic.world import EXTENT, RESOLUTION

    world = load_world(truth_dir)
    index = _species_index(world, species_ids)
    lons, lats = world.lons, world.lats
    xs, ys = np.arange(len(lons)), np.arange(len(lats))
    if bbox is not None:
        west, south, east, north = bbox
        xs = np.flatnonzero((lons >= west) & (lons <= east))
        ys = np.flatnonzero((lats >= south) & (lats <= north))
        if not len(xs) or not len(ys):
            raise GeoplantError(f"the bbox {list(bbox)} holds no cell of the world grid")
    land = world.grids["land"][np.ix_(ys, xs)] > 0
    iy, ix = np.nonzero(land)
    out = np.full((len(index), len(ys), len(xs)), np.nan, dtype=np.float32)
    rng = np.random.default_rng(seed)
    for start in range(0, len(iy), cells_per_step):
        cy, cx = iy[start:start + cells_per_step], ix[start:start + cells_per_step]
        lon = np.repeat(lons[xs[cx]], draws)
        lat = np.repeat(lats[ys[cy]], draws)
        sites = world.sites(rng, lon, lat)
        p = expit(world.niche_logits(sites, index) + world.intercept[index])
        out[:, cy, cx] = p.reshape(len(cy), draws, len(index)).mean(axis=1).T
    transform = Affine.translation(EXTENT[0] + xs[0] * RESOLUTION,
                                   EXTENT[3] - ys[0] * RESOLUTION) \
        * Affine.scale(RESOLUTION, -RESOLUTION)
    da = xr.DataArray(out, dims=("species", "y", "x"), name="probability",
                      coords={"species": world.species_ids[index], "y": lats[ys],
                              "x": lons[xs]},
                      attrs={"long_name": "true probability of occurrence",
                             "draws_per_cell": draws, "seed": seed})
    return da.rio.write_crs("EPSG:4326").rio.write_transform(transform)


def _species_index(world: World, species_ids: Sequence[int] | None) -> np.ndarray:
    if species_ids is None:
        return np.arange(world.n_species)
    position = {int(s): i for i, s in enumerate(world.species_ids)}
    unknown = [int(s) for s in species_ids if int(s) not in position]
    if unknown:
        raise GeoplantError(f"unknown species id(s) {unknown} (not in the synthetic world)")
    return np.array([position[int(s)] for s in species_ids], dtype=np.int64)


def write_truth_maps(truth_dir: str | os.PathLike[str],
                     species_ids: Sequence[int] | None = None, *,
                     out: str | os.PathLike[str] | None = None, draws: int = 16,
                     seed: int = 0, bbox: Sequence[float] | None = None) -> Path:
    """Write the true maps to ``truth/maps/probability.zarr`` (or ``out``).

    The Zarr holds ``probability(species, y, x)`` float32 (NaN at sea) and ``richness(y, x)``,
    the sum over the species written (all species by default: the true expected richness).
    ``draws``, ``seed`` and ``bbox`` are those of :func:`truth_probability_map` (the full tiny
    world, 100 species x 16 draws, takes ~20 s on 2 cores).

    Returns
    -------
    Path
        The folder holding ``probability.zarr``.
    """
    folder = Path(out) if out is not None else truth_folder(truth_dir) / "maps"
    da = truth_probability_map(truth_dir, species_ids, draws=draws, seed=seed, bbox=bbox)
    ds = da.to_dataset()
    ds["richness"] = da.sum("species", min_count=1).astype(np.float32)
    ds["richness"].attrs["long_name"] = "true expected number of species"
    for name in ds.data_vars:
        ds[name].attrs.pop("grid_mapping", None)
        ds[name].encoding["grid_mapping"] = "spatial_ref"  # the CF link to the CRS
    folder.mkdir(parents=True, exist_ok=True)
    chunks = {"species": min(16, ds.sizes["species"]), "y": 256, "x": 256}
    ds.chunk(chunks).to_zarr(folder / "probability.zarr", mode="w", zarr_format=3,
                             consolidated=False)
    return folder


def synthetic_status_table(truth_dir: str | os.PathLike[str]) -> pd.DataFrame:
    """A deterministic conservation-status table for a synthetic world (``speciesId,status``).

    Rarity stands in for threat: species are ranked by their true prevalence (rarest first,
    ties by id) and the rarest 5 % are ``CR``, the next 10 % ``EN``, 15 % ``VU``, 10 % ``NT``,
    the rest ``LC`` (:data:`STATUS_SHARES`). Write it with ``to_csv(path, index=False)``.
    """
    species = pd.read_csv(truth_folder(truth_dir) / "species.csv")
    ranked = species.sort_values(["prevalence", "speciesId"], kind="stable")
    status = np.full(len(ranked), "LC", dtype=object)
    start = 0
    for name, share in STATUS_SHARES:
        stop = start + round(share * len(ranked))
        status[start:stop] = name
        start = stop
    out = pd.DataFrame({"speciesId": ranked["speciesId"].to_numpy(np.int64), "status": status})
    return out.sort_values("speciesId").reset_index(drop=True)
