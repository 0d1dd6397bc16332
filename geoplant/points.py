"""Predictors at arbitrary points: sample a store's environmental rasters at lon/lat.

:meth:`geoplant.store.Store.extract` is the entry point; this module holds the machinery so
that :mod:`geoplant.store` stays light to import.

- Points are EPSG:4326 longitude/latitude; they are reprojected (pyproj) to each raster's
  CRS when it differs, once per distinct grid and block of points.
- Each point takes the value of the cell containing it: the nearest cell centre, as
  ``DataArray.sel(x=..., y=..., method="nearest")`` with a half-cell tolerance; a point
  farther than half a cell from every centre is *outside* the grid and gets NaN.
- Values equal to a raster's nodata (or masked ``_FillValue``) become NaN; every variable
  has a ``valid_<name>`` mask beside it, and ``inside`` says which points fell on the grid.
- Points are processed in blocks (temporaries stay bounded) and the lazy rasters are read
  with dask, one vectorised (``vindex``) selection per raster and block.

The env cube's columns (``Bio1``, ``HumanFootprint-croplands1992``, ``LandCover``...) map to
raster variables with :func:`geoplant.maps.raster_source`; :func:`point_features` builds a
feature matrix in a model's training column order from the rasters, so a model fitted on the
env cube predicts at any point.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

import numpy as np

from geoplant.errors import GeoplantError

if TYPE_CHECKING:
    import xarray as xr

__all__ = [
    "DEFAULT_BLOCK",
    "extract_rasters",
    "iter_extract",
    "point_features",
    "raster_columns",
    "resolve_variables",
]

#: Points per block (bounded temporaries: a few arrays of this length per raster).
DEFAULT_BLOCK: Final = 500_000
#: Coordinate features that are not rasters.
_COORDS: Final = ("lon", "lat")


def _as_points(lon: Any, lat: Any) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(lon, dtype=np.float64).ravel()
    y = np.asarray(lat, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise GeoplantError(f"lon has {x.size} values but lat has {y.size}")
    return x, y


def resolve_variables(variables: Sequence[str] | None, raster_names: Sequence[str]) -> list[str]:
    """Raster names for ``variables`` (raster names or env-cube column names; None: all).

    Raises
    ------
    GeoplantError
        A name matches no raster.
    """
    from geoplant.maps import raster_source

    if variables is None:
        return list(raster_names)
    out: list[str] = []
    for name in variables:
        found = name if name in raster_names else raster_source(name, raster_names)[0]
        if found not in out:
            out.append(found)
    return out


def raster_columns(columns: Sequence[str], raster_names: Sequence[str]
                   ) -> list[tuple[str, int | None]]:
    """Where each env-cube column lives: ``(raster, band)`` or ``("lon"|"lat", None)``.

    The mapping of :func:`geoplant.maps.raster_source` (``Bio1`` -> ``bio1``,
    ``LandCover`` -> band 0 of ``landcover``...), so values extracted at points line up
    with the env cube's columns.
    """
    from geoplant.maps import raster_source

    out: list[tuple[str, int | None]] = []
    for column in columns:
        if column.lower() in _COORDS:
            out.append((column.lower(), None))
        else:
            out.append(raster_source(column, raster_names))
    return out


def _grid_key(da: xr.DataArray) -> tuple[Any, ...]:
    x, y = da["x"].values, da["y"].values
    crs = da.rio.crs
    return (crs.to_wkt() if crs is not None else None, len(x), float(x[0]), float(x[-1]),
            len(y), float(y[0]), float(y[-1]))


def _axis_index(coords: np.ndarray, values: np.ndarray, half: float) -> np.ndarray:
    """Nearest index of ``values`` along a monotonic coordinate; -1 beyond half a cell."""
    import pandas as pd

    # pandas' nearest lookup is what ``.sel(method="nearest", tolerance=...)`` runs
    idx = pd.Index(coords).get_indexer(values, method="nearest", tolerance=half)
    idx[~np.isfinite(values)] = -1
    return idx.astype(np.int64)


def _cell_indices(da: xr.DataArray, x: np.ndarray, y: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(iy, ix, inside)`` of points given in the raster's CRS (indices clipped to 0)."""
    rx, ry = (abs(float(r)) for r in da.rio.resolution())
    # a hair over half a cell: a point on a cell edge still belongs to the grid
    ix = _axis_index(da["x"].values, x, rx / 2 * (1 + 1e-9))
    iy = _axis_index(da["y"].values, y, ry / 2 * (1 + 1e-9))
    inside = (ix >= 0) & (iy >= 0)
    return np.where(inside, iy, 0), np.where(inside, ix, 0), inside


def _to_crs(da: xr.DataArray, lon: np.ndarray, lat: np.ndarray
            ) -> tuple[np.ndarray, np.ndarray]:
    from pyproj import CRS, Transformer

    crs = da.rio.crs
    if crs is None or CRS.from_user_input(crs).equals(CRS.from_epsg(4326)):
        return lon, lat
    x, y = Transformer.from_crs(4326, CRS.from_user_input(crs), always_xy=True).transform(
        lon, lat)
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    bad = ~(np.isfinite(x) & np.isfinite(y))  # pyproj gives inf where it cannot project
    x[bad] = np.nan
    y[bad] = np.nan
    return x, y


def _band_view(name: str, da: xr.DataArray) -> xr.DataArray:
    """Single-band rasters lose their ``band`` dim; multi-band ones name it ``<name>_band``."""
    if "band" not in da.dims:
        return da
    if da.sizes["band"] == 1:
        return da.isel(band=0, drop=True)
    return da.rename(band=f"{name}_band")


def _nodata_to_nan(values: np.ndarray, nodata: Any) -> np.ndarray:
    out = values.astype(np.float32, copy=False)
    if nodata is not None and np.isfinite(nodata):
        out = np.where(values == nodata, np.float32(np.nan), out)
    return out


def _gather(chunk: np.ndarray, iy: np.ndarray, ix: np.ndarray) -> np.ndarray:
    """Values of one raster chunk ``(..., y, x)`` at local cells: ``(n, ...)``."""
    return np.moveaxis(np.asarray(chunk)[..., iy, ix], -1, 0)


def _chunk_groups(darr: Any, iy: np.ndarray, ix: np.ndarray
                  ) -> list[tuple[int, int, np.ndarray]]:
    """Points grouped by the dask chunk holding their cell: ``(chunk_y, chunk_x, points)``."""
    if not len(iy):
        return []
    ybounds = np.cumsum((0, *darr.chunks[-2]))
    xbounds = np.cumsum((0, *darr.chunks[-1]))
    cy = np.searchsorted(ybounds, iy, side="right") - 1
    cx = np.searchsorted(xbounds, ix, side="right") - 1
    key = cy * len(darr.chunks[-1]) + cx
    order = np.argsort(key, kind="stable")
    uniq, starts = np.unique(key[order], return_index=True)
    ends = np.append(starts[1:], len(order))
    n_x = len(darr.chunks[-1])
    return [(int(k) // n_x, int(k) % n_x, order[a:b])
            for k, a, b in zip(uniq, starts, ends, strict=True)]


def _extract_block(rasters: Mapping[str, xr.DataArray], names: Sequence[str],
                   lon: np.ndarray, lat: np.ndarray,
                   scheduler: str | None = None) -> dict[str, Any]:
    """Values of ``names`` at one block of points: ``{name: (dims, array)}`` + ``inside``.

    The vectorised nearest-cell selection, done chunk by chunk: each raster chunk holding
    points is read once (lazily, by dask, in parallel) and indexed with NumPy, far cheaper
    than a dask ``vindex`` over hundreds of thousands of points. ``scheduler`` is dask's
    (None: its default; ``"synchronous"`` inside a task that already runs on a pool).
    """
    import dask

    grids: dict[tuple[Any, ...], tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    groups: dict[tuple[Any, ...], list[tuple[int, int, np.ndarray]]] = {}
    tasks: list[Any] = []
    plan: list[tuple[str, np.ndarray]] = []
    views: dict[str, xr.DataArray] = {}
    for name in names:
        da = _band_view(name, rasters[name])
        da = da.transpose(..., "y", "x")
        views[name] = da
        key = _grid_key(da)
        if key not in grids:  # rasters on one grid share the lookup (and the projection)
            grids[key] = _cell_indices(da, *_to_crs(da, lon, lat))
        iy, ix, inside = grids[key]
        darr = da.data
        if not hasattr(darr, "blocks"):  # an in-memory raster: one chunk
            import dask.array

            darr = dask.array.from_array(np.asarray(darr), chunks=-1)
        if darr.ndim > 2:  # whole band stacks per chunk
            darr = darr.rechunk({i: -1 for i in range(darr.ndim - 2)})
        gkey = (key, darr.chunks[-2:])
        if gkey not in groups:
            groups[gkey] = _chunk_groups(darr, iy[inside], ix[inside])
        pos = np.flatnonzero(inside)
        for by, bx, members in groups[gkey]:
            y0 = sum(darr.chunks[-2][:by])
            x0 = sum(darr.chunks[-1][:bx])
            block = darr.blocks[(*([0] * (darr.ndim - 2)), by, bx)]
            tasks.append(dask.delayed(_gather)(block, iy[inside][members] - y0,
                                               ix[inside][members] - x0))
            plan.append((name, pos[members]))
    results = dask.compute(*tasks, scheduler=scheduler) if tasks else ()
    out: dict[str, Any] = {}
    values: dict[str, np.ndarray] = {}
    for name in names:
        da = views[name]
        values[name] = np.full((len(lon), *da.shape[:-2]), np.nan, dtype=np.float32)
    for (name, where), got in zip(plan, results, strict=True):
        values[name][where] = _nodata_to_nan(got, rasters[name].rio.nodata)
    any_inside = np.zeros(len(lon), dtype=bool)
    for _, _, inside in grids.values():
        any_inside |= inside
    for name in names:
        dims = ("point", *views[name].dims[:-2])
        out[name] = (dims, values[name])
        out[f"valid_{name}"] = (dims, np.isfinite(values[name]))
    out["inside"] = (("point",), any_inside)
    return out


def _band_coords(rasters: Mapping[str, xr.DataArray], names: Sequence[str]
                 ) -> dict[str, np.ndarray]:
    coords: dict[str, np.ndarray] = {}
    for name in names:
        da = _band_view(name, rasters[name])
        dim = f"{name}_band"
        if dim in da.dims:
            coords[dim] = da[dim].values
    return coords


def _dataset(block: dict[str, Any], coords: dict[str, Any]) -> xr.Dataset:
    import xarray as xr

    ds = xr.Dataset(block, coords=coords)
    ds.attrs["crs"] = "EPSG:4326"
    return ds


def iter_extract(rasters: Mapping[str, xr.DataArray], lon: Any, lat: Any,
                 variables: Sequence[str] | None = None, *, block: int = DEFAULT_BLOCK,
                 scheduler: str | None = None) -> Iterator[tuple[slice, xr.Dataset]]:
    """Extract block by block: yields ``(slice of the points, Dataset of that block)``.

    Memory stays flat whatever the number of points (one block at a time); see
    :func:`extract_rasters` for the Dataset's content. ``scheduler``: the dask scheduler
    reading the raster chunks (None: dask's default).
    """
    x, y = _as_points(lon, lat)
    names = resolve_variables(variables, list(rasters))
    bands = _band_coords(rasters, names)
    if block < 1:
        raise GeoplantError(f"block must be >= 1, got {block}")
    for start in range(0, len(x), block):
        sl = slice(start, min(start + block, len(x)))
        coords = {"lon": ("point", x[sl]), "lat": ("point", y[sl]), **bands}
        yield sl, _dataset(_extract_block(rasters, names, x[sl], y[sl], scheduler), coords)


def extract_rasters(rasters: Mapping[str, xr.DataArray], lon: Any, lat: Any,
                    variables: Sequence[str] | None = None, *,
                    block: int = DEFAULT_BLOCK) -> xr.Dataset:
    """Sample rasters at points (nearest cell; NaN outside the grid or at nodata).

    Parameters
    ----------
    rasters
        Lazy rasters as :meth:`geoplant.store.Store.rasters` gives them (dims ``y``, ``x``,
        optionally ``band``; CRS set through rioxarray).
    lon, lat
        EPSG:4326 coordinates of the points.
    variables
        Raster names or env-cube column names (mapped with :func:`resolve_variables`);
        None: every raster.
    block
        Points per block.

    Returns
    -------
    xarray.Dataset
        Dim ``point`` (coords ``lon``, ``lat``); one float32 variable per raster, named like
        the raster (multi-band rasters keep a ``<name>_band`` dim), a boolean
        ``valid_<name>`` beside each (finite value), and ``inside`` (the point fell on the
        grid of at least one raster).
    """
    x, y = _as_points(lon, lat)
    names = resolve_variables(variables, list(rasters))
    out: dict[str, tuple[tuple[str, ...], np.ndarray]] = {}
    for sl, ds in iter_extract(rasters, x, y, names, block=block):
        for var in ds.data_vars:
            da = ds[var]
            if var not in out:  # allocated once: the blocks fill it
                shape = (len(x), *da.shape[1:])
                out[str(var)] = (tuple(str(d) for d in da.dims), np.empty(shape, da.dtype))
            out[str(var)][1][sl] = da.values
    if not out:  # no points: run one empty block for the variables' layout
        return _dataset(_extract_block(rasters, names, x, y),
                        {"lon": ("point", x), "lat": ("point", y),
                         **_band_coords(rasters, names)})
    return _dataset(dict(out), {"lon": ("point", x), "lat": ("point", y),
                                **_band_coords(rasters, names)})


def point_features(rasters: Mapping[str, xr.DataArray], lon: Any, lat: Any,
                   columns: Sequence[str], *, block: int = DEFAULT_BLOCK,
                   scheduler: str | None = None) -> np.ndarray:
    """Feature matrix ``(n_points, len(columns))`` in a model's column order.

    Parameters
    ----------
    rasters
        The store's rasters (:meth:`geoplant.store.Store.rasters`).
    lon, lat
        EPSG:4326 coordinates.
    columns
        Env-cube column names (``Bio1``, ``LandCover``...) and/or ``lon``/``lat``, e.g. the
        ``feature_names`` of a saved model (:func:`geoplant.models.persist.env_feature_names`).
    block
        Points per block (bounded temporaries).
    scheduler
        The dask scheduler reading the raster chunks (None: dask's default;
        ``"synchronous"`` inside a task already running on a pool, as the build does).

    Returns
    -------
    numpy.ndarray
        float64; NaN where a value is missing (outside the grid, nodata).
    """
    x, y = _as_points(lon, lat)
    sources = raster_columns(columns, list(rasters))
    names = list(dict.fromkeys(s[0] for s in sources if s[1] is not None))
    X = np.empty((len(x), len(columns)), dtype=np.float64)
    for sl, ds in iter_extract(rasters, x, y, names, block=block, scheduler=scheduler):
        for j, (name, band) in enumerate(sources):
            if band is None:
                X[sl, j] = x[sl] if name == "lon" else y[sl]
                continue
            values = ds[name].values
            X[sl, j] = values[:, band] if values.ndim == 2 else values
    return X
