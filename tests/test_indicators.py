"""AOO / EOO / preliminary IUCN criterion B, max-TSS thresholds, per-cell assemblage maps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rioxarray  # noqa: F401
import xarray as xr
from pyproj import Transformer

from geoplant.errors import GeoplantError
from geoplant.indicators import (
    area_of_occupancy,
    assemblage_indicators,
    extent_of_occurrence,
    iucn_category,
    map_range,
    max_tss_threshold,
    write_indicators,
)
from geoplant.maps import open_maps
from geoplant.synthetic.world import PRESETS


def test_aoo_counts_2km_cells() -> None:
    x = np.array([1000.0, 1500.0, 1999.0, 3000.0, 9000.0])
    y = np.array([1000.0, 1500.0, 100.0, 1000.0, 9000.0])
    # three points share one 2 km cell, the other two are alone: 3 cells x 4 km²
    assert area_of_occupancy(x, y, crs="EPSG:3035") == 12.0
    assert area_of_occupancy([], [], crs="EPSG:3035") == 0.0
    lon, lat = Transformer.from_crs(3035, 4326, always_xy=True).transform(
        4_321_000 + x, 3_210_000 + y)
    assert area_of_occupancy(lon, lat) == 12.0


def test_eoo_is_convex_hull_area() -> None:
    square = ([0, 10_000, 10_000, 0, 5_000], [0, 0, 10_000, 10_000, 5_000])  # inner point
    assert extent_of_occurrence(*square, crs="EPSG:3035") == pytest.approx(100.0)
    lon, lat = Transformer.from_crs(3035, 4326, always_xy=True).transform(
        4_321_000 + np.array(square[0], float), 3_210_000 + np.array(square[1], float))
    assert extent_of_occurrence(lon, lat) == pytest.approx(100.0, rel=1e-6)
    assert extent_of_occurrence([1.0, 2.0], [45.0, 46.0]) == 0.0  # < 3 points


@pytest.mark.parametrize(("eoo", "aoo", "expected"), [
    (99.99, 12.0, "CR"), (1e6, 9.99, "CR"), (100.0, 10.0, "EN"),
    (4_999.0, 600.0, "EN"), (1e6, 499.0, "EN"), (5_000.0, 500.0, "VU"),
    (19_999.0, 2_500.0, "VU"), (1e6, 1_999.0, "VU"), (20_000.0, 2_000.0, "LC"),
    (50.0, 600.0, "EN"),  # EOO below AOO is raised to the AOO
])
def test_iucn_thresholds_at_boundaries(eoo: float, aoo: float, expected: str) -> None:
    assert iucn_category(eoo, aoo) == expected


def test_max_tss_threshold() -> None:
    t, tss = max_tss_threshold([0, 0, 1, 1, 0], [0.1, 0.2, 0.8, 0.9, 0.3])
    assert t == pytest.approx(0.8) and tss == pytest.approx(1.0)
    assert np.isnan(max_tss_threshold([1, 1], [0.2, 0.3])[0])


def _grid(values: np.ndarray, crs: str, x0: float, y0: float, step: float) -> xr.DataArray:
    ny, nx = values.shape[-2:]
    da = xr.DataArray(values, dims=("y", "x"),
                      coords={"x": x0 + step * (np.arange(nx) + 0.5),
                              "y": y0 - step * (np.arange(ny) + 0.5)})
    return da.rio.write_crs(crs)


def test_map_range_fine_and_coarse() -> None:
    fine = np.zeros((6, 6), dtype=bool)
    fine[0:2, 0:2] = True  # four 1 km cells in one 2 km cell
    fine[5, 5] = True
    aoo, eoo = map_range(_grid(fine, "EPSG:3035", 4_000_000, 3_000_000, 1000.0))
    # hull of the centres (0,0),(1,0),(1,1),(0,1),(5,5) km: 5 km²
    assert aoo == 8.0 and eoo == pytest.approx(5.0)
    coarse = np.zeros((3, 3), dtype=bool)
    coarse[1, 1] = True
    aoo, eoo = map_range(_grid(coarse, "EPSG:4326", 10.0, 50.05, 0.1))
    # one 0.1 degree cell at 50 N: 0.1 * 111.2 km x 0.1 * 111.2 * cos(50) km ~ 80 km²
    assert aoo == pytest.approx(79.6, rel=0.01) and eoo == 0.0


def test_assemblage_indicators() -> None:
    p = np.array([[[0.9, 0.1], [0.6, np.nan]],    # species 1: CR
                  [[0.9, 0.9], [0.1, np.nan]],    # species 2: LC
                  [[0.1, 0.9], [0.7, np.nan]]])   # species 3: VU
    maps = xr.Dataset({"probability": (("species", "y", "x"), p)},
                      coords={"species": [1, 2, 3], "y": [1.5, 0.5], "x": [0.5, 1.5]})
    status = pd.Series(["CR", "LC", "VU"], index=[1, 2, 3])
    out = assemblage_indicators(maps, status, 0.5).load()
    assert out["n_present"].values.tolist()[0] == [2.0, 2.0]
    np.testing.assert_allclose(out["proportion_threatened"].values[:, :1].ravel(), [0.5, 1.0])
    assert out["proportion_threatened"].values[0, 1] == 0.5
    assert out["worst_status"].values.tolist() == [[5, 3], [5, -1]]  # CR, VU / CR, nodata
    assert np.isnan(out["proportion_threatened"].values[1, 1])


def test_write_indicators(env_model_dir: Path, raster_store: Path, glc24_tiny: Path,
                          tmp_path: Path) -> None:
    from geoplant.maps import make_maps
    from geoplant.store import open_store
    from geoplant.synthetic.maps import synthetic_status_table

    maps = tmp_path / "maps"
    make_maps(env_model_dir, raster_store, maps, bbox=(0, 44, 12, 52), top=0,
              progress=False, quicklooks=False)
    status = synthetic_status_table(glc24_tiny)
    n = len(status)  # the world's species, rarest first: 5% CR, 10% EN, 15% VU, 10% NT
    assert n == PRESETS["tiny"].n_species
    assert status["status"].value_counts().to_dict() == {
        "LC": 0.6 * n, "VU": 0.15 * n, "EN": 0.1 * n, "NT": 0.1 * n, "CR": 0.05 * n}
    assert status.equals(synthetic_status_table(glc24_tiny))  # deterministic
    csv = tmp_path / "status.csv"
    status.to_csv(csv, index=False)
    mapped = set(open_maps(maps)["species"].values.tolist())
    species = [int(s) for s in status["speciesId"] if s in mapped][:3]
    with pytest.raises(GeoplantError, match="not in the maps"):
        write_indicators(maps, 0.3, csv, species=[*species, -7])
    folder = write_indicators(maps, 0.3, csv, store=open_store(raster_store), species=species)
    table = pd.read_csv(folder / "species_indicators.csv")
    assert table["speciesId"].tolist() == species
    assert set(table["map_category"]) <= {"CR", "EN", "VU", "LC"}
    assert (table["records_aoo_km2"] % 4 == 0).all()
    cells = xr.open_zarr(folder / "indicators.zarr", consolidated=False)
    frac = cells["proportion_threatened"].values
    assert np.nanmin(frac) >= 0 and np.nanmax(frac) <= 1
    assert (folder / "proportion_threatened.png").is_file()
    assert (folder / "worst_status.png").is_file()
