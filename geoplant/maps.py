"""Wall-to-wall species distribution maps from a saved model (``geoplant map``).

Every cell of the store's environmental raster grid gets a feature vector built from the
rasters in the model's training column order (``lon``, ``lat``, ``Bio1``... -> the rasters
``bio1``..., see :func:`raster_source`), then the model's probabilities. Any model folder of
:func:`geoplant.models.persist.save_trained` maps whose inputs exist at every cell: the
classic env models, ``MaxentPO`` and a ``MultimodalSDM`` on the ``env`` modality (predicted
on the CPU, one encoder pass per block); a model with a Sentinel-2, Landsat or climate
input is refused. With ``--status`` / ``--thresholds`` the conservation indicators
(:mod:`geoplant.indicators`) follow the maps, by default at the validation max-TSS
thresholds saved with the model. The grid is cut into
square spatial blocks; each block is one dask task that reads its raster windows, predicts a
moderate number of species at a time (bounded memory) and writes its own region of a Zarr
store created up front, then leaves a marker. A rerun skips marked blocks (resume), on local
threads or on a dask.distributed cluster (``--scheduler ADDRESS``, shared filesystem).

Outputs in ``MAPS/``::

    probability.zarr     probability(species, y, x) uint8 = round(p * 250), 255 = nodata
                         (CF scale_factor 1/250: xarray decodes it to floats with NaN),
                         richness(y, x) float32 = expected number of species = sum of p,
                         topk_species / topk_probability(rank, y, x): the K likeliest species
                         per cell; CRS + transform in ``spatial_ref`` (rioxarray)
    richness.tif         Cloud-Optimized GeoTIFF of the richness
    species/<id>.tif     COG of each requested species' probability (float32, NaN nodata)
    png/richness.png, png/<id>.png   quick-looks, species maps with their PA / PO records
    map.json             what was mapped (model, store, grid, species, timings)
    indicators/          with --status or --thresholds: species_indicators.csv and, with a
                         status table, indicators.zarr and PNGs (geoplant.indicators)
    _progress/           config + one marker per finished block (resume)

Chunks of ``probability`` are ``(species_chunk, block, block)`` (default (16, 256, 256),
1 MiB of uint8). Reading one species' map costs ``n_cells * species_chunk`` bytes and one
cell's species list ``n_species * block**2`` bytes: small species chunks keep species maps
cheap, and the per-cell question is answered by ``topk_*`` (one chunk per cell). Zarr v3
sharding could pack these small chunks into fewer files at continental scale.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import numpy as np

from geoplant.errors import GeoplantError
from geoplant.files import atomic_write_text

if TYPE_CHECKING:
    import xarray as xr

    from geoplant.models.persist import SavedModel
    from geoplant.store import Store

__all__ = [
    "NODATA",
    "SCALE",
    "Grid",
    "configure_parser",
    "make_maps",
    "open_maps",
    "raster_grid",
    "raster_source",
    "read_status_csv",
    "read_thresholds_csv",
    "run",
]

#: uint8 code of "no data" in ``probability`` and ``topk_probability``.
NODATA: Final = 255
#: Probabilities are stored as ``round(p * SCALE)`` (0..250; steps of 0.004).
SCALE: Final = 250.0
#: Coordinate features (not rasters).
_COORDS: Final = ("lon", "lat")
#: Env-table column prefixes -> raster name prefixes (layouts.ENV_COLUMNS -> raster_names).
_PREFIXES: Final = (("humanfootprint-", "hfp_"), ("soilgrid-", "soil_"), ("soilgrids-", "soil_"))


# ---------------------------------------------------------------------------------------------
# features <-> rasters


def raster_source(column: str, raster_names: Sequence[str]) -> tuple[str, int]:
    """The raster (and band index) holding an env-table column on the store's grid.

    The env cube's columns are the pre-extracted CSV columns (``Bio1``, ``Elevation``,
    ``HumanFootprint-croplands1992``, ``LandCover``, ``Soilgrid-phh2o``...); the rasters are
    named by :func:`geoplant.layouts.raster_names` (``bio1``, ``elevation``,
    ``hfp_Croplands1992``, ``landcover``, ``soil_phh2o``). Names match case-insensitively after
    the prefix mapping; ``LandCover`` is band 1 (``LC_Type1``, IGBP) of ``landcover``.

    Raises
    ------
    GeoplantError
        No raster matches.
    """
    by_key = {_key(n): n for n in raster_names}
    name = column.lower()
    match = re.fullmatch(r"bio_?(\d+)", name)
    if match:
        name = f"bio{int(match.group(1))}"
    for prefix, replacement in _PREFIXES:
        if name.startswith(prefix):
            name = replacement + name[len(prefix):]
    found = by_key.get(_key(name))
    if found is None:
        raise GeoplantError(f"no raster for the model's feature {column!r}",
                            fix="build the store with its environmental rasters; rasters "
                                f"here: {', '.join(raster_names) or 'none'}")
    return found, 0


def _key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


@dataclass(frozen=True)
class Grid:
    """A raster grid (or a window of it): cell-centre coordinates, CRS, affine transform.

    Attributes
    ----------
    x, y
        Cell-centre coordinates (``y`` usually decreasing).
    crs
        CRS as WKT.
    transform
        GDAL-order affine coefficients ``(a, b, c, d, e, f)`` of the window.
    y0, x0
        Offsets of the window in the full raster grid.
    """

    x: np.ndarray
    y: np.ndarray
    crs: str
    transform: tuple[float, float, float, float, float, float]
    y0: int = 0
    x0: int = 0

    @property
    def shape(self) -> tuple[int, int]:
        """``(ny, nx)``."""
        return len(self.y), len(self.x)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """``(left, bottom, right, top)`` of the cell edges."""
        a, _, c, _, e, f = self.transform
        ny, nx = self.shape
        ys = (f, f + e * ny)
        return c, min(ys), c + a * nx, max(ys)


def raster_grid(store: Store, reference: str | None = None,
                bbox: Sequence[float] | None = None) -> Grid:
    """The grid of a store raster (default: the first), optionally cut to a lon/lat bbox.

    Parameters
    ----------
    store
        An open store with rasters.
    reference
        Raster name whose grid is used.
    bbox
        ``(west, south, east, north)`` in degrees (EPSG:4326): cells whose centres fall
        inside are kept.

    Raises
    ------
    GeoplantError
        The store has no rasters, or the bbox holds no cell.
    """
    from affine import Affine

    rasters = _rasters(store.path)
    if not rasters:
        raise GeoplantError("the store has no environmental rasters", path=store.path,
                            fix="build it with its rasters (geoplant build without "
                                "--no-rasters)")
    da = rasters[reference or next(iter(rasters))]
    x, y = da["x"].to_numpy(), da["y"].to_numpy()
    full = da.rio.transform()
    crs = da.rio.crs.to_wkt()
    if bbox is None:
        return Grid(x, y, crs, tuple(full)[:6])  # type: ignore[arg-type]
    west, south, east, north = _bbox_in(bbox, crs)
    xs = np.flatnonzero((x >= west) & (x <= east))
    ys = np.flatnonzero((y >= south) & (y <= north))
    if not len(xs) or not len(ys):
        raise GeoplantError(f"the bbox {list(bbox)} holds no cell of the raster grid",
                            fix=f"use a bbox inside {list(np.round(_grid_bounds(x, y), 4))}")
    xs = np.arange(xs[0], xs[-1] + 1)
    ys = np.arange(ys[0], ys[-1] + 1)
    window = full * Affine.translation(int(xs[0]), int(ys[0]))
    return Grid(x[xs], y[ys], crs, tuple(window)[:6],  # type: ignore[arg-type]
                int(ys[0]), int(xs[0]))


def _grid_bounds(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float, float]:
    return float(x.min()), float(y.min()), float(x.max()), float(y.max())


def _bbox_in(bbox: Sequence[float], crs_wkt: str) -> tuple[float, float, float, float]:
    """A lon/lat bbox in the grid's CRS."""
    from pyproj import CRS, Transformer

    if len(bbox) != 4 or not bbox[0] < bbox[2] or not bbox[1] < bbox[3]:
        raise GeoplantError(f"bad bbox {list(bbox)}", fix="give WEST SOUTH EAST NORTH with "
                                                         "west < east and south < north")
    crs = CRS.from_wkt(crs_wkt)
    if crs.equals(CRS.from_epsg(4326)):
        return float(bbox[0]), float(bbox[1]), float(bbox[2]), float(bbox[3])
    west, south, east, north = (float(v) for v in bbox)
    out = Transformer.from_crs(4326, crs, always_xy=True).transform_bounds(west, south, east,
                                                                          north)
    return float(out[0]), float(out[1]), float(out[2]), float(out[3])


@functools.lru_cache(maxsize=4)
def _rasters(store_path: str) -> dict[str, xr.DataArray]:
    """The store's rasters, opened once per process (tasks share them)."""
    from geoplant.store import open_store

    return open_store(store_path).rasters()


@functools.lru_cache(maxsize=4)
def _model(model_dir: str, stamp: float) -> SavedModel:
    """A saved model, loaded once per process and file version (``stamp``: mtime)."""
    from geoplant.models.persist import load_model

    return load_model(model_dir)


# ---------------------------------------------------------------------------------------------
# one block


def _block_features(spec: dict[str, Any], ys: slice, xs: slice) -> tuple[np.ndarray, np.ndarray]:
    """Feature matrix ``(cells, features)`` of a block and its validity mask ``(cells,)``.

    A cell is nodata (sea, outside the rasters) when most of its raster features are missing;
    scattered gaps are left as NaN for the model to impute, as in training.
    """
    from pyproj import Transformer

    rasters = _rasters(spec["store"])
    gy = np.asarray(spec["y"])[ys]
    gx = np.asarray(spec["x"])[xs]
    ny, nx = len(gy), len(gx)
    columns: list[np.ndarray] = []
    raster_cols: list[int] = []
    lonlat: tuple[np.ndarray, np.ndarray] | None = None
    for i, source in enumerate(spec["sources"]):
        if source[0] == "coord":
            if lonlat is None:
                xx, yy = np.meshgrid(gx, gy)
                if spec["geographic"]:
                    lonlat = (xx.ravel(), yy.ravel())
                else:
                    to_ll = Transformer.from_crs(spec["crs"], 4326, always_xy=True)
                    lon, lat = to_ll.transform(xx.ravel(), yy.ravel())
                    lonlat = (np.asarray(lon), np.asarray(lat))
            columns.append(lonlat[0] if source[1] == "lon" else lonlat[1])
            continue
        _, name, band = source
        da = rasters[name]
        da = da.isel(band=band) if "band" in da.dims else da
        if spec["aligned"][name]:
            window = da.isel(y=slice(spec["y0"] + ys.start, spec["y0"] + ys.stop),
                             x=slice(spec["x0"] + xs.start, spec["x0"] + xs.stop))
        else:  # another grid in the same CRS: nearest cell
            window = da.sel(y=gy, x=gx, method="nearest")
        columns.append(np.asarray(window.values, dtype=np.float64).reshape(ny * nx))
        raster_cols.append(i)
    X = np.column_stack(columns) if columns else np.zeros((ny * nx, 0))
    X[~np.isfinite(X)] = np.nan
    valid = (np.isfinite(X[:, raster_cols]).mean(axis=1) > 0.5) if raster_cols \
        else np.ones(ny * nx, dtype=bool)
    return X, valid


def _block_predictor(model: Any, X: np.ndarray) -> Callable[[slice], np.ndarray]:
    """``predict(cols)``: probabilities of the species columns ``cols`` of the cells ``X``
    (float32 ``(cells, species)``).

    What every species shares is computed once per block (the logistic model's expanded
    features, a torch model's encoder pass up to its output layer); each species chunk then
    costs one small product, and memory stays cells x species_chunk.
    """
    from geoplant.models.classic import EnvLogisticBaseline
    from geoplant.models.maxent import MaxentPO

    if isinstance(model, EnvLogisticBaseline):
        from scipy.special import expit

        F = model._features(X)
        idx_all = np.arange(len(model.intercept_))

        def logistic(cols: slice) -> np.ndarray:
            out = expit(F @ model.coef_[:, cols] + model.intercept_[cols]).astype(np.float32)
            idx = idx_all[cols]
            const = np.isin(idx, model._constant)
            out[:, const] = model.prior_[idx[const]].astype(np.float32)
            return out
        return logistic
    if hasattr(model, "hidden") and hasattr(model, "species_proba"):  # a TorchPredictor
        H = model.hidden(X)
        return lambda cols: np.asarray(model.species_proba(H, cols), dtype=np.float32)
    if isinstance(model, MaxentPO):
        return lambda cols: model.predict_proba(X, columns=cols)
    full = np.asarray(model.predict_proba(X), dtype=np.float32)
    return lambda cols: full[:, cols]


def _merge_topk(best_p: np.ndarray, best_i: np.ndarray, p: np.ndarray, ids: np.ndarray,
                k: int) -> tuple[np.ndarray, np.ndarray]:
    """Keep the ``k`` largest of the running best and a new chunk (per row)."""
    allp = np.concatenate([best_p, p], axis=1)
    alli = np.concatenate([best_i, np.broadcast_to(ids, p.shape)], axis=1)
    k = min(k, allp.shape[1])
    part = np.argpartition(-allp, k - 1, axis=1)[:, :k] if allp.shape[1] > k \
        else np.broadcast_to(np.arange(allp.shape[1]), allp.shape)
    rows = np.arange(len(allp))[:, None]
    return allp[rows, part], alli[rows, part]


def _run_block(spec: dict[str, Any], iy: int, ix: int) -> int:
    """Predict one spatial block, write its regions, leave its marker; return its cell count."""
    import zarr

    b = spec["block"]
    ny, nx = spec["shape"]
    ys, xs = slice(iy * b, min((iy + 1) * b, ny)), slice(ix * b, min((ix + 1) * b, nx))
    saved = _model(spec["model_dir"], spec["model_stamp"])
    X, valid = _block_features(spec, ys, xs)
    Xv = X[valid]
    n_species, sc, k = len(saved.species_ids), spec["species_chunk"], spec["top_k"]
    shape2 = (ys.stop - ys.start, xs.stop - xs.start)
    group = zarr.open_group(spec["zarr"], mode="r+")
    richness = np.zeros(len(Xv))
    best_p = np.zeros((len(Xv), 0), dtype=np.float32)
    best_i = np.zeros((len(Xv), 0), dtype=np.int64)
    predict = _block_predictor(saved.model, Xv) if len(Xv) else None
    for s0 in range(0, n_species, sc):
        cols = slice(s0, min(s0 + sc, n_species))
        q = np.full((cols.stop - s0, len(X)), NODATA, dtype=np.uint8)
        if predict is not None:
            p = predict(cols)
            qv = np.rint(np.clip(p, 0.0, 1.0) * SCALE).astype(np.uint8)
            q[:, valid] = qv.T
            # richness and top-K from the stored values: they agree with the Zarr exactly
            pq = qv.astype(np.float32) / SCALE
            richness += pq.sum(axis=1, dtype=np.float64)
            best_p, best_i = _merge_topk(best_p, best_i, pq, saved.species_ids[cols], k)
        group["probability"][cols, ys, xs] = q.reshape(-1, *shape2)  # type: ignore[index]
    rich = np.full(len(X), np.nan, dtype=np.float32)
    rich[valid] = richness
    group["richness"][ys, xs] = rich.reshape(shape2)  # type: ignore[index]
    order = np.argsort(-best_p, axis=1, kind="stable")
    rows = np.arange(len(Xv))[:, None]
    top_p = np.full((k, len(X)), NODATA, dtype=np.uint8)
    top_i = np.full((k, len(X)), -1, dtype=np.int32)
    kk = best_p.shape[1]
    top_p[:kk, valid] = np.rint(best_p[rows, order] * SCALE).astype(np.uint8).T
    top_i[:kk, valid] = best_i[rows, order].astype(np.int32).T
    group["topk_probability"][:, ys, xs] = top_p.reshape(k, *shape2)  # type: ignore[index]
    group["topk_species"][:, ys, xs] = top_i.reshape(k, *shape2)  # type: ignore[index]
    atomic_write_text(_marker(spec["out"], iy, ix), "done\n")
    return int(valid.sum())


def _marker(out: str | Path, iy: int, ix: int) -> Path:
    return Path(out) / "_progress" / "blocks" / f"{iy}-{ix}.done"


# ---------------------------------------------------------------------------------------------
# indicator inputs: status table and thresholds

#: Per-species thresholds: a CSV path, "max-tss", one number, or id -> threshold.
Thresholds = str | os.PathLike[str] | float | Mapping[int, float]


def _indicator_inputs(saved: SavedModel, status: str | os.PathLike[str] | None,
                      thresholds: Thresholds | None
                      ) -> tuple[Any, float | dict[int, float], str] | None:
    """``(status series or None, thresholds, where they came from)`` of the indicators, or
    None when none were asked for; bad files are refused before mapping."""
    if status is None and thresholds is None:
        return None
    table = read_status_csv(status, saved.species_ids) if status is not None else None
    if thresholds is None or (isinstance(thresholds, str) and thresholds == "max-tss"):
        saved_thr = saved.thresholds()
        if saved_thr is None:
            raise GeoplantError("the model folder holds no validation max-TSS thresholds",
                                path=saved.path,
                                fix="pass --thresholds CSV (speciesId,threshold) or a number, "
                                    "or save the model with save_trained(..., val=val)")
        return table, saved_thr, "max-tss (validation, saved with the model)"
    if isinstance(thresholds, Mapping):
        return table, {int(k): float(v) for k, v in thresholds.items()}, "given"
    if isinstance(thresholds, int | float):
        return table, _unit_threshold(float(thresholds), "threshold"), "constant"
    text = str(thresholds)
    try:
        value = float(text)
    except ValueError:
        return table, read_thresholds_csv(text, saved.species_ids), text
    return table, _unit_threshold(value, "--thresholds"), "constant"


def _unit_threshold(value: float, name: str) -> float:
    if not 0.0 <= value <= 1.0:
        raise GeoplantError(f"{name} {value} is not a probability",
                            fix="give a threshold in [0, 1], a CSV or max-tss")
    return value


def _read_csv(path: str | os.PathLike[str], columns: tuple[str, str], what: str) -> Any:
    """A CSV with ``columns``, its ids checked as integers (one-line errors naming it)."""
    import pandas as pd

    if not Path(path).is_file():
        raise GeoplantError(f"no such {what} file", path=path,
                            fix=f"give a CSV with the columns {','.join(columns)}")
    try:
        table = pd.read_csv(path)
    except (ValueError, OSError, UnicodeDecodeError) as err:
        raise GeoplantError(f"unreadable {what} CSV ({str(err).splitlines()[0]})", path=path,
                            fix=f"give a CSV with the columns {','.join(columns)}") from None
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise GeoplantError(f"{what} CSV lacks the column(s) {', '.join(missing)} (has "
                            f"{', '.join(map(str, table.columns)) or 'none'})", path=path,
                            fix=f"give a CSV with the columns {','.join(columns)}")
    ids = pd.to_numeric(table[columns[0]], errors="coerce")
    if ids.isna().any() or (ids % 1 != 0).any():
        raise GeoplantError(f"{what} CSV has non-integer speciesId values", path=path)
    if ids.duplicated().any():
        dup = int(ids[ids.duplicated()].iloc[0])
        raise GeoplantError(f"{what} CSV lists speciesId {dup} twice", path=path)
    return table.assign(**{columns[0]: ids.astype(np.int64)})


def _check_known(ids: np.ndarray, species_ids: np.ndarray, path: str | os.PathLike[str],
                 what: str) -> None:
    unknown = np.setdiff1d(ids, species_ids)
    if len(unknown):
        shown = ", ".join(str(int(v)) for v in unknown[:5])
        raise GeoplantError(f"{what} CSV has {len(unknown)} unknown species id(s) ({shown}"
                            f"{', ...' if len(unknown) > 5 else ''}): not species of the model",
                            path=path, fix="list only the model's species (its species_ids)")


def read_status_csv(path: str | os.PathLike[str], species_ids: Sequence[int] | np.ndarray
                    ) -> Any:
    """A status table ``speciesId,status`` for a model's species, as a Series id -> status.

    A status table is a checklist, usually wider than a model's species (a synthetic world's
    ``truth/status.csv`` lists species the store never recorded): ids beyond the model are
    ignored, but a table naming none of the model's species is refused (wrong file or ids).
    The model's species it does not list count as ``DD``.

    Raises
    ------
    GeoplantError
        Missing file or columns, unknown statuses, no id among ``species_ids``
        (one line naming the file).
    """
    from geoplant.indicators import read_status_table

    table = _read_csv(path, ("speciesId", "status"), "status")
    ids = table["speciesId"].to_numpy()
    if len(ids) and not np.isin(ids, np.asarray(species_ids)).any():
        _check_known(ids, np.asarray(species_ids), path, "status")
    try:
        return read_status_table(table)
    except GeoplantError as err:
        raise GeoplantError(f"status CSV: {err.problem}", path=path, fix=err.fix) from None


def read_thresholds_csv(path: str | os.PathLike[str], species_ids: Sequence[int] | np.ndarray
                        ) -> dict[int, float]:
    """Per-species thresholds from a CSV ``speciesId,threshold`` (species not listed get
    none: their indicators are ``DD``).

    Raises
    ------
    GeoplantError
        Missing file or columns, thresholds outside [0, 1], ids not among ``species_ids``.
    """
    import pandas as pd

    table = _read_csv(path, ("speciesId", "threshold"), "thresholds")
    _check_known(table["speciesId"].to_numpy(), np.asarray(species_ids), path, "thresholds")
    values = pd.to_numeric(table["threshold"], errors="coerce")
    bad = values.isna() | (values < 0) | (values > 1)
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise GeoplantError(f"thresholds CSV row {row + 2}: threshold "
                            f"{table['threshold'].iloc[row]!r} is not a probability in [0, 1]",
                            path=path)
    return dict(zip(table["speciesId"].tolist(), values.astype(float).tolist(), strict=True))


# ---------------------------------------------------------------------------------------------
# the whole map


@dataclass
class MapResult:
    """What :func:`make_maps` did.

    Attributes
    ----------
    out
        The maps folder.
    blocks_total, blocks_computed
        Spatial blocks of the grid, and those computed by this call (the rest were done).
    cells
        Cells of the grid; ``valid_cells`` those with data (land).
    seconds
        Wall time of the block computation.
    species
        Species with a COG and a PNG.
    indicators
        The indicators folder (``MAPS/indicators``), when they were asked for.
    """

    out: Path
    blocks_total: int
    blocks_computed: int
    cells: int
    valid_cells: int
    seconds: float
    species: list[int]
    indicators: Path | None = None

    @property
    def cells_per_s(self) -> float:
        """Cells predicted per second (computed blocks only)."""
        done = self.cells * self.blocks_computed / max(self.blocks_total, 1)
        return done / self.seconds if self.seconds > 0 else float("nan")


def _feature_sources(feature_names: Sequence[str], raster_names: Sequence[str]
                     ) -> list[tuple[Any, ...]]:
    sources: list[tuple[Any, ...]] = []
    for name in feature_names:
        if name.lower() in _COORDS:
            sources.append(("coord", name.lower()))
        else:
            raster, band = raster_source(name, raster_names)
            sources.append(("raster", raster, band))
    return sources


def _aligned(da: xr.DataArray, ref: xr.DataArray) -> bool:
    """Whether a raster is on the reference grid (same shape and coordinates)."""
    from pyproj import CRS

    if da.rio.crs is None or not CRS.from_user_input(da.rio.crs).equals(
            CRS.from_user_input(ref.rio.crs)):
        raise GeoplantError(f"raster {da.name!r} is not in the grid's CRS",
                            fix="reproject the rasters to one CRS before building the store")
    return (da.sizes["x"] == ref.sizes["x"] and da.sizes["y"] == ref.sizes["y"]
            and np.allclose(da["x"].values, ref["x"].values)
            and np.allclose(da["y"].values, ref["y"].values))


def _select_species(saved: SavedModel, store: Store, species: Sequence[int] | None,
                    top: int | None) -> list[int]:
    known = {int(s) for s in saved.species_ids}
    if species:
        unknown = [int(s) for s in species if int(s) not in known]
        if unknown:
            raise GeoplantError(f"unknown species id(s) {unknown} (not in the model)",
                                fix=f"use ids of the model's {len(known)} species, e.g. "
                                    f"{sorted(known)[:5]}")
        return [int(s) for s in species]
    if not top:
        return []
    table = store.species
    counts = table[[c for c in table.columns if c.startswith("n_")]].sum(axis=1)
    ranked = table.assign(n=counts).sort_values(["n", "speciesId"], ascending=[False, True])
    return [int(s) for s in ranked["speciesId"] if int(s) in known][:top]


def _create_zarr(path: Path, grid: Grid, species_ids: np.ndarray, block: int,
                 species_chunk: int, top_k: int) -> None:
    """An empty (all nodata) output store with coordinates, CRS and transform."""
    import dask.array as da
    import rioxarray  # noqa: F401  (registers .rio)
    import xarray as xr
    from affine import Affine

    ny, nx = grid.shape
    s = len(species_ids)
    chunk3 = (min(species_chunk, s), block, block)
    ds = xr.Dataset(
        {"probability": (("species", "y", "x"),
                         da.full((s, ny, nx), np.nan, dtype=np.float32, chunks=chunk3)),
         "richness": (("y", "x"),
                      da.full((ny, nx), np.nan, dtype=np.float32, chunks=(block, block))),
         "topk_species": (("rank", "y", "x"),
                          da.full((top_k, ny, nx), -1, dtype=np.int32,
                                  chunks=(top_k, block, block))),
         "topk_probability": (("rank", "y", "x"),
                              da.full((top_k, ny, nx), np.nan, dtype=np.float32,
                                      chunks=(top_k, block, block)))},
        coords={"species": ("species", species_ids.astype(np.int64)),
                "rank": ("rank", np.arange(1, top_k + 1)),
                "y": ("y", grid.y), "x": ("x", grid.x)},
        attrs={"created_by": "geoplant map"},
    )
    ds = ds.rio.write_crs(grid.crs).rio.write_transform(Affine(*grid.transform))
    scaled = {"dtype": "uint8", "scale_factor": 1.0 / SCALE, "_FillValue": NODATA}
    encoding = {"probability": {**scaled, "chunks": chunk3},
                "topk_probability": {**scaled, "chunks": (top_k, block, block)},
                "topk_species": {"_FillValue": -1, "chunks": (top_k, block, block)},
                "richness": {"_FillValue": np.float32(np.nan), "chunks": (block, block)}}
    for name in ds.data_vars:  # explicit encodings drop rioxarray's: keep the CF link
        ds[name].attrs["grid_mapping"] = "spatial_ref"
    ds["probability"].attrs["long_name"] = "probability of occurrence"
    ds["richness"].attrs["long_name"] = "expected number of species (sum of probabilities)"
    ds.to_zarr(path, mode="w", compute=False, zarr_format=3, consolidated=False,
               encoding=encoding)


def _prepare(out: Path, config: dict[str, Any], overwrite: bool) -> None:
    """Check (or start) the resumable state of ``out``."""
    progress = out / "_progress"
    config_path = progress / "config.json"
    text = json.dumps(config, indent=1, sort_keys=True) + "\n"
    if out.exists() and (overwrite or (not config_path.is_file()
                                       and (progress / "config.json.tmp").is_file())):
        shutil.rmtree(out)  # asked for, or a template whose creation was interrupted
    if config_path.is_file():
        if config_path.read_text() == text:
            return  # resume
        raise GeoplantError("this maps folder was started with another model, store, grid "
                            "or settings", path=out,
                            fix="pass --overwrite, or another --out")
    if out.exists() and any(out.iterdir()):
        raise GeoplantError("the maps folder is not empty", path=out,
                            fix="pass --overwrite, or another --out")
    (progress / "blocks").mkdir(parents=True, exist_ok=True)
    atomic_write_text(progress / "config.json.tmp", text)  # committed after the template


def make_maps(model_dir: str | os.PathLike[str], store: Store | str | os.PathLike[str],
              out: str | os.PathLike[str], *, species: Sequence[int] | None = None,
              top: int | None = None, bbox: Sequence[float] | None = None,
              scheduler: str | None = None, workers: int | None = None, block: int = 256,
              species_chunk: int = 16, top_k: int = 10, overwrite: bool = False,
              progress: bool = True, quicklooks: bool = True,
              status: str | os.PathLike[str] | None = None,
              thresholds: Thresholds | None = None) -> MapResult:
    """Map every cell of the store's raster grid with a saved model (resumable).

    Parameters
    ----------
    model_dir
        Folder written by :func:`geoplant.models.persist.save_model`.
    store
        The store (or its path) whose rasters give the grid and the features.
    out
        The maps folder.
    species, top
        Species with a COG and a quick-look: these ids, or the ``top`` most recorded ones
        (the Zarr always holds every species of the model).
    bbox
        ``(west, south, east, north)`` in degrees: map only this part of the grid.
    scheduler
        Address of a dask.distributed scheduler (workers must see ``out``, the store and the
        model at the same paths); default: local threads.
    workers
        Local threads (default: dask's, one per core).
    block
        Side of the spatial blocks (cells); also the Zarr's spatial chunk.
    species_chunk
        Species predicted together and stored in one chunk.
    top_k
        Number of likeliest species stored per cell.
    overwrite
        Start again in a non-empty ``out``.
    progress
        Show a progress bar.
    quicklooks
        Write the PNG quick-looks.
    status
        CSV ``speciesId,status`` (IUCN codes): after mapping, write the conservation
        indicators (:func:`geoplant.indicators.write_indicators`) into ``out/indicators``.
    thresholds
        Per-species presence thresholds of the indicators: a CSV ``speciesId,threshold``,
        ``"max-tss"`` (the validation max-TSS thresholds saved with the model), one number
        for all species, or a mapping id -> threshold. Default: the saved max-TSS thresholds
        when the model has them. Given without ``status``, only the per-species indicators
        are written.

    Returns
    -------
    MapResult

    Raises
    ------
    GeoplantError
        Missing model, a model that cannot be mapped (a modality without wall-to-wall
        rasters), store without rasters, unknown species, bad bbox, bad status or threshold
        CSV, or an ``out`` started with other settings.
    """
    from geoplant.models.persist import load_model
    from geoplant.store import open_store

    saved = load_model(model_dir)
    check = getattr(saved.model, "check_mappable", None)
    if check is not None:  # a torch model: only wall-to-wall modalities have raster inputs
        check()
    store = open_store(store)
    indicator_inputs = _indicator_inputs(saved, status, thresholds)  # before hours of mapping
    grid = raster_grid(store, bbox=bbox)  # also: "no rasters"
    rasters = _rasters(store.path)
    sources = _feature_sources(saved.feature_names, list(rasters))
    chosen = _select_species(saved, store, species, top)
    ref = next(iter(rasters.values()))
    used = sorted({s[1] for s in sources if s[0] == "raster"})
    model_dir = Path(model_dir).resolve()
    out_path = Path(out)
    spec: dict[str, Any] = {
        "store": store.path, "model_dir": str(model_dir),
        "model_stamp": (model_dir / "weights.npz").stat().st_mtime,
        "out": str(out_path), "zarr": str(out_path / "probability.zarr"),
        "sources": sources, "aligned": {n: _aligned(rasters[n], ref) for n in used},
        "x": grid.x, "y": grid.y, "x0": grid.x0, "y0": grid.y0, "shape": grid.shape,
        "crs": grid.crs, "geographic": _is_geographic(grid.crs),
        "block": int(block), "species_chunk": int(species_chunk), "top_k": int(top_k),
    }
    config = {"model": _fingerprint(model_dir), "store": os.path.abspath(store.path),
              "grid": [grid.y0, grid.x0, *grid.shape], "block": block,
              "species_chunk": species_chunk, "top_k": top_k}
    _prepare(out_path, config, overwrite)
    pending_config = out_path / "_progress" / "config.json.tmp"
    if pending_config.exists():
        _create_zarr(out_path / "probability.zarr", grid, saved.species_ids, block,
                     species_chunk, top_k)
        os.replace(pending_config, out_path / "_progress" / "config.json")
    ny, nx = grid.shape
    blocks = [(iy, ix) for iy in range(-(-ny // block)) for ix in range(-(-nx // block))]
    todo = [b for b in blocks if not _marker(out_path, *b).exists()]
    started = time.perf_counter()
    valid = _compute(spec, todo, scheduler, workers, progress)
    seconds = time.perf_counter() - started
    maps = open_maps(out_path)
    valid_cells = int(np.isfinite(maps["richness"]).sum())
    _write_products(out_path, maps, store, chosen, quicklooks)
    indicators = None
    if indicator_inputs is not None:
        from geoplant.indicators import write_indicators

        indicators = write_indicators(out_path, indicator_inputs[1], indicator_inputs[0],
                                      store=store)
    result = MapResult(out_path, len(blocks), len(todo), ny * nx, valid_cells, seconds, chosen,
                       indicators)
    summary = {"model": str(model_dir), "store": store.path, "bbox": list(bbox) if bbox else None,
               "grid": {"shape": [ny, nx], "bounds": list(grid.bounds), "crs": grid.crs},
               "species_mapped": len(saved.species_ids), "species_products": chosen,
               "blocks_total": len(blocks), "blocks_computed": len(todo),
               "cells": ny * nx, "valid_cells": valid_cells, "valid_cells_this_run": valid,
               "seconds": round(seconds, 3), "cells_per_s": round(result.cells_per_s, 1),
               "indicators": str(indicators) if indicators is not None else None,
               "thresholds": indicator_inputs[2] if indicator_inputs is not None else None}
    atomic_write_text(out_path / "map.json", json.dumps(summary, indent=1) + "\n")
    return result


def _is_geographic(crs_wkt: str) -> bool:
    from pyproj import CRS

    return bool(CRS.from_wkt(crs_wkt).is_geographic)


def _fingerprint(model_dir: Path) -> str:
    digest = hashlib.sha256()
    for name in ("model.json", "weights.npz"):
        digest.update((model_dir / name).read_bytes())
    return digest.hexdigest()


def _compute(spec: dict[str, Any], todo: list[tuple[int, int]], scheduler: str | None,
             workers: int | None, progress: bool) -> int:
    """Run the block tasks (local threads or a distributed cluster) with a progress bar."""
    import dask
    from tqdm.auto import tqdm

    if not todo:
        return 0
    tasks = [dask.delayed(_run_block, pure=False)(spec, iy, ix,
                                                  dask_key_name=f"map-block-{iy}-{ix}")
             for iy, ix in todo]
    bar = tqdm(total=len(todo), desc="map blocks", unit="block", disable=not progress)
    try:
        if scheduler:
            from distributed import Client, as_completed

            try:
                client = Client(scheduler, timeout="10s")
            except OSError as err:
                raise GeoplantError(f"cannot reach the dask scheduler ({err})",
                                    fix="check --scheduler ADDRESS (tcp://host:8786)") from None
            with client:
                total = 0
                for future in as_completed(client.compute(tasks)):
                    total += int(future.result())
                    bar.update(1)
                return total
        with _BlockProgress(bar):
            results = dask.compute(*tasks, scheduler="threads", num_workers=workers)
        return int(sum(results))
    finally:
        bar.close()


class _BlockProgress:
    """A dask local-scheduler callback that advances a tqdm bar per finished block."""

    def __init__(self, bar: Any) -> None:
        from dask.callbacks import Callback

        def posttask(key: Any, result: Any, dsk: Any, state: Any, worker_id: Any) -> None:
            if str(key).startswith("map-block-"):
                bar.update(1)

        self._callback = Callback(posttask=posttask)

    def __enter__(self) -> _BlockProgress:
        self._callback.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._callback.__exit__(*exc)


def open_maps(out: str | os.PathLike[str], *, decode: bool = True) -> xr.Dataset:
    """The maps Zarr as a lazy Dataset (probabilities decoded to floats with NaN nodata).

    With ``decode=False`` the stored uint8 codes are returned (``p * 250``, 255 nodata).

    Raises
    ------
    GeoplantError
        ``out`` holds no ``probability.zarr``.
    """
    import rioxarray  # noqa: F401
    import xarray as xr

    path = Path(out) / "probability.zarr"
    if not path.is_dir():
        raise GeoplantError("no probability.zarr here", path=out,
                            fix="write maps with `geoplant map MODEL_DIR --data STORE --out "
                                "MAPS`")
    ds = xr.open_zarr(path, consolidated=False, decode_coords="all", mask_and_scale=decode)
    if decode:  # ids stay integers (-1: nodata) rather than floats with NaN
        ds["topk_species"] = ds["topk_species"].fillna(-1).astype(np.int32)
    return ds


# ---------------------------------------------------------------------------------------------
# COGs and quick-looks


def _write_products(out: Path, maps: xr.Dataset, store: Store, species: Sequence[int],
                    quicklooks: bool) -> None:
    crs = maps["spatial_ref"].attrs.get("crs_wkt")
    rich = maps["richness"].astype(np.float32)
    _write_cog(rich, crs, out / "richness.tif")
    if quicklooks:
        _quicklook(rich, out / "png" / "richness.png", "expected species richness",
                   cmap="viridis")
    for sid in species:
        prob = maps["probability"].sel(species=sid).astype(np.float32)
        _write_cog(prob, crs, out / "species" / f"{sid}.tif")
        if quicklooks:
            _quicklook(prob, out / "png" / f"{sid}.png", f"species {sid}: probability",
                       cmap="magma", vmin=0.0, vmax=1.0, points=_records(store, sid))


def _write_cog(da: xr.DataArray, crs: str | None, path: Path) -> None:
    """A Cloud-Optimized GeoTIFF (float32, NaN nodata), written atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    da = da.drop_vars([c for c in da.coords if c not in ("x", "y", "spatial_ref")])
    da = da.rio.write_crs(crs).rio.write_nodata(np.nan, encoded=False)
    tmp = path.with_suffix(".tmp.tif")
    da.load().rio.to_raster(tmp, driver="COG", compress="DEFLATE")
    os.replace(tmp, path)


def _records(store: Store, species_id: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """lon/lat of a species' PA presences and PO records."""
    out = {}
    for split, label in (("pa_train", "PA presence"), ("po_train", "PO record")):
        if split in store.splits:
            rec = store.records(split, columns=["speciesId", "lon", "lat"])
            rec = rec[rec["speciesId"] == species_id]
            out[label] = (rec["lon"].to_numpy(), rec["lat"].to_numpy())
    return out


def _quicklook(da: xr.DataArray, path: Path, title: str, *, cmap: str,
               vmin: float | None = None, vmax: float | None = None,
               points: dict[str, tuple[np.ndarray, np.ndarray]] | None = None) -> None:
    """A PNG of a map (coarsened to at most ~1,500 pixels a side), records overlaid."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    factor = max(1, -(-max(da.sizes["y"], da.sizes["x"]) // 1500))
    if factor > 1:
        da = da.coarsen(y=factor, x=factor, boundary="trim").mean()
    values = da.values
    x, y = da["x"].values, da["y"].values
    dx = abs(float(x[1] - x[0])) if len(x) > 1 else 1.0
    dy = abs(float(y[1] - y[0])) if len(y) > 1 else 1.0
    extent = (x.min() - dx / 2, x.max() + dx / 2, y.min() - dy / 2, y.max() + dy / 2)
    fig, ax = plt.subplots(figsize=(8, 8 * (extent[3] - extent[2]) / (extent[1] - extent[0])
                                    + 0.8))
    image = ax.imshow(values, extent=extent, cmap=cmap, vmin=vmin, vmax=vmax,
                      origin="upper" if y[0] > y[-1] else "lower", interpolation="nearest")
    fig.colorbar(image, ax=ax, shrink=0.7)
    for (label, (lon, lat)), style in zip((points or {}).items(),
                                          ({"c": "cyan", "marker": "o", "s": 6},
                                           {"c": "lime", "marker": "x", "s": 6}), strict=False):
        inside = (lon >= extent[0]) & (lon <= extent[1]) & (lat >= extent[2]) & (lat <= extent[3])
        ax.scatter(lon[inside], lat[inside], label=f"{label} ({int(inside.sum())})",
                   linewidths=0.6, **style)  # type: ignore[arg-type]
    if points:
        ax.legend(loc="lower left", fontsize=8)
    ax.set_title(title)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# command line


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add the ``map`` command's options."""
    parser.add_argument("model_dir", help="model folder (geoplant.models.persist.save_trained; "
                                          "geoplant run saves one into OUT/model)")
    parser.add_argument("--data", required=True, help="store whose rasters give the grid")
    parser.add_argument("--out", required=True, help="maps folder (resumable)")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--species", type=int, nargs="+", metavar="ID",
                       help="species with a COG and a quick-look")
    which.add_argument("--top", type=int, default=None, metavar="N",
                       help="COGs and quick-looks of the N most recorded species (default 5)")
    parser.add_argument("--bbox", type=float, nargs=4, metavar=("W", "S", "E", "N"),
                        help="map only this lon/lat box")
    parser.add_argument("--scheduler", metavar="ADDRESS",
                        help="dask.distributed scheduler (default: local threads)")
    parser.add_argument("--workers", type=int, default=None, help="local threads")
    parser.add_argument("--block", type=int, default=256, help="block side in cells (256)")
    parser.add_argument("--species-chunk", type=int, default=16,
                        help="species per Zarr chunk and per prediction step (16)")
    parser.add_argument("--top-k", type=int, default=10,
                        help="likeliest species stored per cell (10)")
    parser.add_argument("--status", metavar="CSV",
                        help="speciesId,status (IUCN) table: write the conservation indicators "
                             "into OUT/indicators after mapping")
    parser.add_argument("--thresholds", metavar="CSV|max-tss|P",
                        help="presence thresholds of the indicators: CSV speciesId,threshold, "
                             "max-tss (validation, saved with the model; the default when "
                             "saved) or one probability")
    parser.add_argument("--overwrite", action="store_true", help="start --out again")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """Run ``geoplant map``."""
    if args.block < 16 or args.species_chunk < 1 or args.top_k < 1:
        raise GeoplantError("--block must be >= 16, --species-chunk and --top-k >= 1")
    top = args.top if args.top is not None or args.species else 5
    result = make_maps(args.model_dir, args.data, args.out, species=args.species, top=top,
                       bbox=args.bbox, scheduler=args.scheduler, workers=args.workers,
                       block=args.block, species_chunk=args.species_chunk, top_k=args.top_k,
                       overwrite=args.overwrite, progress=not args.quiet,
                       status=args.status, thresholds=args.thresholds)
    print(f"wrote maps to {result.out}: {result.cells:,} cells ({result.valid_cells:,} with "
          f"data), {result.blocks_computed}/{result.blocks_total} blocks computed in "
          f"{result.seconds:.1f} s; COGs for {len(result.species)} species")
    if result.indicators is not None:
        print(f"wrote indicators to {result.indicators}")
    return 0
