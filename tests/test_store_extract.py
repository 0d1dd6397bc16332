"""``Store.extract``: nearest-cell values at points, NaN + masks outside / at nodata, CRS."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rioxarray  # noqa: F401  (registers .rio)
import xarray as xr

from geoplant.errors import GeoplantError
from geoplant.points import extract_rasters, point_features, raster_columns
from geoplant.store import open_store


def test_extract_cell_centres_and_outside(raster_store: Path) -> None:
    store = open_store(raster_store)
    bio1 = store.rasters()["bio1"].isel(band=0)
    values = bio1.values
    iy, ix = np.nonzero(np.isfinite(values))
    pick = [0, len(iy) // 2, len(iy) - 1]
    lon = np.r_[bio1["x"].values[ix[pick]], -60.0]  # the last point is far off the grid
    lat = np.r_[bio1["y"].values[iy[pick]], 10.0]
    ds = store.extract(lon, lat, ["bio1", "LandCover"], block=2)  # several blocks
    assert ds.sizes["point"] == 4 and set(ds.data_vars) >= {"bio1", "landcover", "inside"}
    np.testing.assert_array_equal(ds["bio1"].values[:3],
                                  values[iy[pick], ix[pick]].astype(np.float32))
    assert np.isnan(ds["bio1"].values[3]) and not ds["valid_bio1"].values[3]
    assert ds["inside"].values.tolist() == [True, True, True, False]
    assert ds["landcover"].dims == ("point", "landcover_band")
    # a point a hair inside the cell edge still takes that cell
    res = abs(float(bio1["x"].values[1] - bio1["x"].values[0]))
    near = store.extract(lon[:1] + 0.49 * res, lat[:1] - 0.49 * res, ["bio1"])
    assert near["bio1"].values[0] == np.float32(values[iy[0], ix[0]])


def test_extract_nodata_is_masked(raster_store: Path) -> None:
    store = open_store(raster_store)
    bio1 = store.rasters()["bio1"].isel(band=0)
    iy, ix = np.nonzero(~np.isfinite(bio1.values))  # sea cells
    ds = store.extract(bio1["x"].values[ix[:3]], bio1["y"].values[iy[:3]], ["bio1"])
    assert np.isnan(ds["bio1"].values).all() and not ds["valid_bio1"].values.any()
    assert ds["inside"].values.all()


def test_extract_numeric_nodata_and_projected_crs() -> None:
    # a 3 x 4 grid in Web Mercator with nodata -9999
    x = np.array([0.5, 1.5, 2.5, 3.5]) * 100_000
    y = np.array([2.5, 1.5, 0.5]) * 100_000 + 5_000_000
    data = np.arange(12, dtype=np.float32).reshape(3, 4)
    data[0, 0] = -9999
    da = xr.DataArray(data, dims=("y", "x"), coords={"x": x, "y": y}, name="v")
    da = da.rio.write_crs("EPSG:3857").rio.write_nodata(-9999)
    from pyproj import Transformer

    lon, lat = Transformer.from_crs(3857, 4326, always_xy=True).transform(
        np.r_[x[[0, 1, 3]], 9e6], np.r_[y[[0, 2, 1]], 0.0])
    ds = extract_rasters({"v": da.chunk({"y": 2, "x": 2})}, lon, lat)
    got = ds["v"].values
    assert np.isnan(got[0]) and got[1] == data[2, 1] and got[2] == data[1, 3]
    assert np.isnan(got[3]) and ds["inside"].values.tolist() == [True, True, True, False]


def test_point_features_line_up_with_env_cube(raster_store: Path) -> None:
    store = open_store(raster_store)
    cube = store.cube("pa_train")
    columns = [str(c) for c in cube["env_variable"].values]
    rasters = store.rasters()
    assert raster_columns(["LandCover", "lon"], list(rasters)) == [("landcover", 0),
                                                                    ("lon", None)]
    records = store.records("pa_train", columns=["surveyId", "lon", "lat"]) \
        .drop_duplicates("surveyId").set_index("surveyId").loc[cube["surveyId"].values]
    X = point_features(rasters, records["lon"], records["lat"], ["lon", *columns])
    env = cube["env"].values.astype(np.float64)
    np.testing.assert_array_equal(X[:, 0], records["lon"].to_numpy())
    ok = np.isfinite(X[:, 1:]) & np.isfinite(env)
    for j, name in enumerate(columns):  # same variable: strongly correlated over surveys
        if name.startswith("Bio") and ok[:, j].sum() > 50:
            r = np.corrcoef(X[ok[:, j], j + 1], env[ok[:, j], j])[0, 1]
            assert r > 0.9, name


def test_extract_errors(raster_store: Path, loader_store: Path) -> None:
    store = open_store(raster_store)
    with pytest.raises(GeoplantError, match="no raster"):
        store.extract([1.0], [45.0], ["NotAVariable"])
    with pytest.raises(GeoplantError, match="lon has 2 values"):
        store.extract([1.0, 2.0], [45.0], ["bio1"])
    with pytest.raises(GeoplantError, match="no environmental rasters"):
        open_store(loader_store).extract([1.0], [45.0])
    empty = store.extract([], [], ["bio1"])
    assert empty.sizes["point"] == 0 and "bio1" in empty
