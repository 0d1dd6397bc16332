"""Conservation indicators from maps and records: AOO, EOO, preliminary IUCN criterion B.

Per species, from the thresholded map (cells with ``p >= threshold``; choose the threshold on
validation data with :func:`max_tss_threshold`) and from the species' records:

- **AOO**, area of occupancy: the area of the 2 x 2 km cells (of a grid in EPSG:3035,
  the European equal-area projection) holding a record or a suitable map cell. A map cell
  larger than a 2 km cell counts for its own area (it is occupied wall to wall).
- **EOO**, extent of occurrence: the area of the convex hull of the records or of the
  suitable cells' centres, in km² in EPSG:3035 (shapely/geopandas).
- The **preliminary** IUCN Red List category under criterion B (geographic range):
  CR if EOO < 100 km² or AOO < 10 km²; EN if EOO < 5,000 or AOO < 500; VU if EOO < 20,000 or
  AOO < 2,000; else ``LC`` (``NT`` is not assessed). It is preliminary: criterion B also
  requires two of (a) severe fragmentation or few locations, (b) continuing decline,
  (c) extreme fluctuations, which range size alone cannot tell.

Per cell, for the assemblage predicted present (``p >= threshold`` per species) and a status
table (CSV ``speciesId,status``): the proportion of threatened species (CR, EN, VU) and the
status of the most threatened one. Results are written as CSV, Zarr and PNG by
:func:`write_indicators`.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import numpy as np
import pandas as pd

from geoplant.errors import GeoplantError

if TYPE_CHECKING:
    import xarray as xr

    from geoplant.store import Store

__all__ = [
    "AOO_CELL_KM",
    "EQUAL_AREA",
    "STATUS_ORDER",
    "area_of_occupancy",
    "assemblage_indicators",
    "extent_of_occurrence",
    "iucn_category",
    "map_range",
    "max_tss_threshold",
    "read_status_table",
    "species_indicators",
    "write_indicators",
]

#: Equal-area CRS for areas (ETRS89-extended / LAEA Europe).
EQUAL_AREA: Final = "EPSG:3035"
#: Side of the AOO grid cells (km), as the IUCN guidelines prescribe.
AOO_CELL_KM: Final = 2.0
#: Statuses from least to most threatened (index = severity code in the per-cell maps).
STATUS_ORDER: Final = ("DD", "LC", "NT", "VU", "EN", "CR")
_THREATENED: Final = ("VU", "EN", "CR")
#: Criterion B thresholds: category, EOO below (km²), AOO below (km²), most severe first.
_CRITERION_B: Final = (("CR", 100.0, 10.0), ("EN", 5_000.0, 500.0), ("VU", 20_000.0, 2_000.0))


# ---------------------------------------------------------------------------------------------
# thresholds


def max_tss_threshold(y_true: Any, probs: Any) -> tuple[float, float]:
    """The threshold maximising the true skill statistic (sensitivity + specificity - 1).

    Parameters
    ----------
    y_true
        0/1 presences (validation surveys) of one species.
    probs
        Predicted probabilities for the same surveys.

    Returns
    -------
    (threshold, tss)
        Predict presence where ``p >= threshold``. ``(nan, nan)`` without both presences and
        absences.
    """
    from sklearn.metrics import roc_curve

    y = np.asarray(y_true).ravel() != 0
    p = np.asarray(probs, dtype=np.float64).ravel()
    if y.all() or not y.any():
        return float("nan"), float("nan")
    fpr, tpr, thresholds = roc_curve(y, p)
    tss = tpr - fpr
    best = int(np.argmax(tss))
    return float(min(thresholds[best], 1.0)), float(tss[best])


def max_tss_thresholds(Y: Any, P: Any) -> np.ndarray:
    """:func:`max_tss_threshold` of every species column (dense or sparse ``Y``)."""
    import scipy.sparse as sp

    Yd = Y.toarray() if sp.issparse(Y) else np.asarray(Y)
    P = np.asarray(P)
    return np.array([max_tss_threshold(Yd[:, j], P[:, j])[0] for j in range(P.shape[1])])


# ---------------------------------------------------------------------------------------------
# range sizes


@functools.lru_cache(maxsize=8)
def _to_equal_area(crs: str) -> Any:
    """The transformer of ``crs`` -> :data:`EQUAL_AREA` (building one costs ~70 ms: once per
    CRS, not once per species)."""
    from pyproj import Transformer

    return Transformer.from_crs(crs, EQUAL_AREA, always_xy=True)


def _project(lon: Any, lat: Any, crs: str = "EPSG:4326") -> tuple[np.ndarray, np.ndarray]:
    x, y = _to_equal_area(crs).transform(np.asarray(lon, dtype=np.float64),
                                         np.asarray(lat, dtype=np.float64))
    return np.asarray(x), np.asarray(y)


def area_of_occupancy(lon: Any, lat: Any, *, cell_km: float = AOO_CELL_KM,
                      crs: str = "EPSG:4326") -> float:
    """AOO (km²) of point records: occupied ``cell_km`` cells of an EPSG:3035 grid x their area.

    The grid is anchored at the projection's origin (the IUCN leaves the origin free; fixing
    it makes the figure reproducible).
    """
    x, y = _project(lon, lat, crs)
    ok = np.isfinite(x) & np.isfinite(y)
    if not ok.any():
        return 0.0
    size = cell_km * 1000.0
    cells = np.unique(np.column_stack([np.floor(x[ok] / size), np.floor(y[ok] / size)]), axis=0)
    return float(len(cells) * cell_km**2)


def extent_of_occurrence(lon: Any, lat: Any, *, crs: str = "EPSG:4326") -> float:
    """EOO (km²): area of the convex hull of the points in EPSG:3035 (0 for < 3 points)."""
    import geopandas as gpd

    lon, lat = np.asarray(lon, dtype=np.float64), np.asarray(lat, dtype=np.float64)
    ok = np.isfinite(lon) & np.isfinite(lat)
    if ok.sum() < 3:
        return 0.0
    points = gpd.GeoSeries(gpd.points_from_xy(lon[ok], lat[ok]), crs=crs).to_crs(EQUAL_AREA)
    return float(points.union_all().convex_hull.area / 1e6)


def iucn_category(eoo_km2: float, aoo_km2: float) -> str:
    """Preliminary IUCN criterion-B category from range sizes alone (``CR``/``EN``/``VU``/``LC``).

    Thresholds are strict (``<``): an EOO of exactly 100 km² is not CR. As the IUCN
    guidelines ask, an EOO smaller than the AOO is raised to the AOO. Preliminary: criterion B
    also needs fragmentation / decline / fluctuation conditions (not assessed; no ``NT``).
    """
    eoo = max(float(eoo_km2), float(aoo_km2))
    for category, eoo_max, aoo_max in _CRITERION_B:
        if eoo < eoo_max or aoo_km2 < aoo_max:
            return category
    return "LC"


def _cell_areas_km2(grid: xr.DataArray) -> np.ndarray:
    """Area (km²) of each cell of a grid ``(y, x)``, exact on the ellipsoid for lon/lat grids."""
    from pyproj import CRS, Geod

    x, y = grid["x"].values, grid["y"].values
    dx = abs(float(x[1] - x[0])) if len(x) > 1 else 1.0
    dy = abs(float(y[1] - y[0])) if len(y) > 1 else 1.0
    crs = grid.rio.crs
    if crs is not None and not CRS.from_user_input(crs).is_geographic:
        return np.full((len(y), len(x)), dx * dy / 1e6)
    geod = Geod(ellps="WGS84")
    rows = np.array([abs(geod.polygon_area_perimeter(
        [0, dx, dx, 0], [lat - dy / 2, lat - dy / 2, lat + dy / 2, lat + dy / 2])[0])
        for lat in y]) / 1e6
    return np.repeat(rows[:, None], len(x), axis=1)


def map_range(mask: xr.DataArray, *, cell_km: float = AOO_CELL_KM) -> tuple[float, float]:
    """(AOO, EOO) in km² of a boolean suitability map ``(y, x)`` with a CRS.

    AOO: fine maps (cells smaller than a 2 km cell) count the 2 km cells holding a suitable
    cell centre; coarser maps sum the suitable cells' areas. EOO: convex hull of the suitable
    cells' centres.
    """
    values = np.asarray(mask.values, dtype=bool)
    if not values.any():
        return 0.0, 0.0
    crs = str(mask.rio.crs) if mask.rio.crs is not None else "EPSG:4326"
    iy, ix = np.nonzero(values)
    xs, ys = mask["x"].values[ix], mask["y"].values[iy]
    areas = _cell_areas_km2(mask)
    if float(np.median(areas[iy, ix])) < cell_km**2:
        aoo = area_of_occupancy(xs, ys, cell_km=cell_km, crs=crs)
    else:
        aoo = float(areas[iy, ix].sum())
    return aoo, extent_of_occurrence(xs, ys, crs=crs)


# ---------------------------------------------------------------------------------------------
# per species, per cell


def read_status_table(path: str | os.PathLike[str] | pd.DataFrame) -> pd.Series:
    """A status table (CSV ``speciesId,status``) as a Series speciesId -> upper-case status.

    Raises
    ------
    GeoplantError
        Missing columns or unknown statuses.
    """
    table = path if isinstance(path, pd.DataFrame) else pd.read_csv(path)
    if not {"speciesId", "status"} <= set(table.columns):
        raise GeoplantError("a status table needs the columns speciesId,status",
                            path=None if isinstance(path, pd.DataFrame) else path)
    status = table["status"].astype(str).str.strip().str.upper()
    unknown = sorted(set(status) - set(STATUS_ORDER))
    if unknown:
        raise GeoplantError(f"unknown status(es) {unknown}",
                            fix=f"use {', '.join(STATUS_ORDER)}")
    return pd.Series(status.to_numpy(), index=table["speciesId"].astype(np.int64).to_numpy())


def _thresholds(species: np.ndarray, threshold: float | Mapping[int, float]) -> np.ndarray:
    if isinstance(threshold, Mapping):
        return np.array([float(threshold.get(int(s), np.nan)) for s in species])
    return np.full(len(species), float(threshold))


def species_indicators(maps: xr.Dataset, threshold: float | Mapping[int, float],
                       store: Store | None = None,
                       species: Sequence[int] | None = None) -> pd.DataFrame:
    """AOO, EOO and preliminary category per species, from the map and from the records.

    Parameters
    ----------
    maps
        :func:`geoplant.maps.open_maps` of a maps folder.
    threshold
        One threshold for all species, or per species id (e.g. max-TSS on validation).
    store
        If given, the species' PA presences and PO records give the ``records_*`` columns.
    species
        Species to assess (default: all in the maps).

    Returns
    -------
    DataFrame
        ``speciesId``, ``threshold``, ``map_aoo_km2``, ``map_eoo_km2``, ``map_category``,
        and with a store ``n_records``, ``records_aoo_km2``, ``records_eoo_km2``,
        ``records_category``.
    """
    ids = np.asarray(species if species is not None else maps["species"].values, dtype=np.int64)
    unmapped = np.setdiff1d(ids, maps["species"].values)
    if len(unmapped):
        raise GeoplantError(f"{len(unmapped)} requested species are not in the maps (e.g. "
                            f"{unmapped[:5].tolist()})",
                            fix="ask for species of the mapped model (maps['species'])")
    thresholds = _thresholds(ids, threshold)
    records = _all_records(store) if store is not None else None
    rows = []
    for sid, t in zip(ids, thresholds, strict=True):
        prob = maps["probability"].sel(species=sid)
        aoo, eoo = map_range(prob >= t) if np.isfinite(t) else (np.nan, np.nan)
        row: dict[str, Any] = {"speciesId": int(sid), "threshold": t, "map_aoo_km2": aoo,
                               "map_eoo_km2": eoo,
                               "map_category": iucn_category(eoo, aoo) if np.isfinite(aoo)
                               else "DD"}
        if records is not None:
            rec = records[records["speciesId"] == sid]
            r_aoo = area_of_occupancy(rec["lon"], rec["lat"]) if len(rec) else 0.0
            r_eoo = extent_of_occurrence(rec["lon"], rec["lat"])
            row |= {"n_records": len(rec), "records_aoo_km2": r_aoo, "records_eoo_km2": r_eoo,
                    "records_category": iucn_category(r_eoo, r_aoo) if len(rec) else "DD"}
        rows.append(row)
    return pd.DataFrame(rows)


def _all_records(store: Store) -> pd.DataFrame:
    parts = [store.records(split, columns=["speciesId", "lon", "lat"])
             for split in ("pa_train", "po_train") if split in store.splits]
    return pd.concat(parts, ignore_index=True)


def assemblage_indicators(maps: xr.Dataset, status: pd.Series | str | os.PathLike[str],
                          threshold: float | Mapping[int, float]) -> xr.Dataset:
    """Per cell: species predicted present, proportion threatened, most threatened status.

    Lazy (dask, chunk by chunk over the maps' spatial chunks). Species missing from the
    status table count as ``DD``.

    Returns
    -------
    xarray.Dataset
        ``n_present(y, x)``, ``n_threatened``, ``proportion_threatened`` (NaN where nothing
        is present or no data), ``worst_status`` (index into :data:`STATUS_ORDER`, -1: none).
    """
    table = status if isinstance(status, pd.Series) else read_status_table(status)
    ids = maps["species"].values.astype(np.int64)
    codes = np.array([STATUS_ORDER.index(table.get(int(s), "DD")) for s in ids], dtype=np.int8)
    threatened = np.isin(np.array(STATUS_ORDER)[codes], _THREATENED)
    thr = _thresholds(ids, threshold)
    prob = maps["probability"]
    present = prob >= prob["species"].copy(data=thr)
    nodata = prob.isnull().all("species")
    n_present = present.sum("species")
    n_threat = (present & prob["species"].copy(data=threatened)).sum("species")
    worst = ((present * (prob["species"].copy(data=codes) + 1)).max("species") - 1) \
        .astype(np.int8)
    out = prob.to_dataset().drop_vars(["probability", "species"])
    out["n_present"] = n_present.where(~nodata).astype(np.float32)
    out["n_threatened"] = n_threat.where(~nodata).astype(np.float32)
    out["proportion_threatened"] = (n_threat / n_present.where(n_present > 0)).where(~nodata) \
        .astype(np.float32)
    out["worst_status"] = worst.where(~nodata, -1)
    out.attrs["worst_status_codes"] = ",".join(STATUS_ORDER)
    return out


def write_indicators(maps_dir: str | os.PathLike[str], threshold: float | Mapping[int, float],
                     status: pd.Series | str | os.PathLike[str] | None = None,
                     store: Store | None = None, species: Sequence[int] | None = None,
                     out: str | os.PathLike[str] | None = None) -> Path:
    """Write ``species_indicators.csv``, ``indicators.zarr`` and PNG maps into ``out``.

    ``out`` defaults to ``MAPS/indicators``. Without a status table only the per-species CSV
    is written. Returns the folder.
    """
    from geoplant.maps import _quicklook, open_maps

    maps = open_maps(maps_dir)
    folder = Path(out) if out is not None else Path(maps_dir) / "indicators"
    folder.mkdir(parents=True, exist_ok=True)
    table = species_indicators(maps, threshold, store, species)
    table.to_csv(folder / "species_indicators.csv", index=False, lineterminator="\n")
    if status is not None:
        cells = assemblage_indicators(maps, status, threshold)
        for name in cells.data_vars:
            cells[name].encoding = {}
        cells.to_zarr(folder / "indicators.zarr", mode="w", zarr_format=3, consolidated=False)
        cells = cells.load()
        _quicklook(cells["proportion_threatened"], folder / "proportion_threatened.png",
                   "proportion of predicted species that are threatened (VU/EN/CR)",
                   cmap="Reds", vmin=0.0, vmax=1.0)
        worst = cells["worst_status"].astype(np.float32).where(cells["worst_status"] >= 0)
        _quicklook(worst, folder / "worst_status.png",
                   "most threatened status present (" + " < ".join(STATUS_ORDER) + ")",
                   cmap="RdYlGn_r", vmin=0.0, vmax=len(STATUS_ORDER) - 1)
    return folder
