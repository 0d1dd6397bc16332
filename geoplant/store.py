"""Open a built store lazily: records as (Geo)DataFrames, labels as sparse matrices, cubes as
dask-backed xarray Datasets (or raw Zarr groups), rasters as DataArrays. Paths may be local or
any fsspec URL."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any, Literal, overload

import numpy as np
import pandas as pd

from geoplant.errors import GeoplantError
from geoplant.files import join_path

if TYPE_CHECKING:  # annotations only: `import geoplant.store` stays light
    import fsspec
    import geopandas as gpd
    import scipy.sparse as sp
    import xarray as xr
    import zarr


#: Keys every store manifest has (what :meth:`Store.info` and the readers rely on).
_MANIFEST_KEYS = ("format", "created_by", "layout", "splits", "modalities", "counts", "skipped")


@dataclass(frozen=True)
class Labels:
    """Presence labels of a split.

    Attributes
    ----------
    matrix
        ``scipy.sparse.csr_matrix`` (n_surveys, n_species) of 0/1 (uint8).
    survey_ids
        int64 row index (sorted; the same order as :meth:`Store.cube`).
    species_ids
        int32 column index (the store's species table order).
    """

    matrix: sp.csr_matrix
    survey_ids: np.ndarray
    species_ids: np.ndarray


class Store:
    """A geoplant store built by ``geoplant build`` (see :mod:`geoplant.builder`).

    Parameters
    ----------
    path
        Folder or fsspec URL of the store.
    storage_options
        Passed to fsspec for remote stores.
    """

    def __init__(self, path: str | os.PathLike[str],
                 storage_options: dict[str, Any] | None = None) -> None:
        import fsspec

        self.path = os.fspath(path)
        self.storage_options = storage_options or {}
        self._fs, self._root = fsspec.core.url_to_fs(self.path, **self.storage_options)
        manifest = join_path(self._root, "manifest.json")
        if not self._fs.exists(manifest):
            hint = ("the build was interrupted: rerun the same `geoplant build` to finish it"
                    if self._fs.exists(join_path(self._root, "_build"))
                    else "build one with `geoplant build RAW --out STORE`")
            raise GeoplantError("not a geoplant store (no manifest.json)", path=self.path,
                                fix=hint)
        self.manifest: dict[str, Any] = self._read_manifest(manifest)

    def _read_manifest(self, manifest: str) -> dict[str, Any]:
        """``manifest.json``, checked: a damaged one is a one-line error, not a traceback."""
        fix = "rebuild the store: `geoplant build RAW --out STORE --overwrite`"
        try:
            with self._fs.open(manifest, "rb") as handle:
                content = json.loads(handle.read().decode("utf-8"))
        except (ValueError, UnicodeDecodeError) as err:  # JSONDecodeError is a ValueError
            raise GeoplantError(f"damaged manifest.json ({err})", path=manifest,
                                fix=fix) from None
        except OSError as err:
            raise GeoplantError(f"cannot read manifest.json ({err.strerror or err})",
                                path=manifest, fix="check the store's permissions") from None
        missing = [k for k in _MANIFEST_KEYS if not isinstance(content, dict) or k not in content]
        if missing:
            raise GeoplantError(f"damaged manifest.json (no {', '.join(missing)})",
                                path=manifest, fix=fix)
        return content

    def __repr__(self) -> str:
        counts = self.manifest.get("counts", {})
        return (f"Store({self.path!r}, layout={self.manifest.get('layout')!r}, "
                f"splits={self.splits}, species={counts.get('species')})")

    @property
    def splits(self) -> list[str]:
        """Splits in the store."""
        return list(self.manifest["splits"])

    @property
    def fs(self) -> fsspec.AbstractFileSystem:
        """The fsspec filesystem holding the store (opened with :attr:`storage_options`)."""
        return self._fs

    @property
    def root(self) -> str:
        """The store's folder as a path on :attr:`fs` (no protocol prefix)."""
        return self._root

    def modalities(self, split: str) -> list[str]:
        """Modalities stored in a split's cube, e.g. ``["sentinel2", "landsat", ...]``.

        Empty for a split without a cube or unknown to the store. ``po_train`` has a cube
        only where the build found PO predictors: ``env`` (PO tables, or the rasters sampled
        at PO surveys; the manifest's ``po_env_source``) and, where the release ships PO
        time series (GeoPlant 2026), ``landsat`` and ``climate``.
        """
        return list(self.manifest.get("modalities", {}).get(split, []))

    def has_species(self, split: str) -> bool:
        """Whether the split's records carry species (train splits; test splits do not).

        Raises
        ------
        GeoplantError
            If the store has no such split.
        """
        import pyarrow.parquet as pq

        self._check_split(split)
        schema = pq.read_schema(join_path(self._root, "records", f"{split}.parquet"),
                                filesystem=self._fs)
        return "speciesId" in schema.names

    def has_cube(self, split: str) -> bool:
        """Whether the split has a cube: every PA split; ``po_train`` only with PO predictors
        (env from the release's PO tables or sampled from the rasters at build time, PO
        time-series cubes where the release has them)."""
        return split in self.splits and (split != "po_train"
                                         or split in self.manifest.get("modalities", {}))

    def _check_split(self, split: str, *, cube: bool = False) -> None:
        valid = [s for s in self.splits if not cube or self.has_cube(s)]
        if split not in valid:
            raise GeoplantError(f"no split {split!r} in this store", path=self.path,
                                fix=f"use one of: {', '.join(valid)}")

    def _url(self, *parts: str) -> str:
        protocol = self._fs.protocol if isinstance(self._fs.protocol, str) else \
            self._fs.protocol[0]
        root = join_path(self._root, *parts)
        return root if protocol in ("file", "local") else f"{protocol}://{root}"

    @cached_property
    def species(self) -> pd.DataFrame:
        """Species table: ``index`` (label column), ``speciesId``, record counts per split."""
        with self._fs.open(join_path(self._root, "species.parquet"), "rb") as handle:
            return pd.read_parquet(handle)

    @overload
    def records(self, split: str, *, geo: Literal[False] = ...,
                columns: list[str] | None = ...) -> pd.DataFrame: ...

    @overload
    def records(self, split: str, *, geo: Literal[True],
                columns: list[str] | None = ...) -> gpd.GeoDataFrame: ...

    @overload
    def records(self, split: str, *, geo: bool,
                columns: list[str] | None = ...) -> pd.DataFrame | gpd.GeoDataFrame: ...

    def records(self, split: str, *, geo: bool = False,
                columns: list[str] | None = None) -> pd.DataFrame | gpd.GeoDataFrame:
        """Records of a split (one row per record; PA train: per survey x species).

        Parameters
        ----------
        split
            e.g. ``"po_train"``, ``"pa_train"``, ``"pa_test"``.
        geo
            Return a ``geopandas.GeoDataFrame`` (EPSG:4326 points) instead of a DataFrame.
        columns
            Subset of columns to read (Parquet column projection).

        Returns
        -------
        pandas.DataFrame or geopandas.GeoDataFrame
            A GeoDataFrame when ``geo`` is true (with its ``geometry`` column), else a
            DataFrame without the geometry.
        """
        self._check_split(split)
        path = join_path(self._root, "records", f"{split}.parquet")
        if geo:
            import geopandas as gpd

            with self._fs.open(path, "rb") as handle:
                return gpd.read_parquet(handle, columns=columns)
        import pyarrow.parquet as pq

        cols = [c for c in (columns or pq.read_schema(path, filesystem=self._fs).names)
                if c != "geometry"]
        table = pq.read_table(path, columns=cols, filesystem=self._fs)
        return table.to_pandas()

    def labels(self, split: str) -> Labels:
        """Sparse presence matrix (survey x species) of a split with species records."""
        import scipy.sparse as sp

        self._check_split(split)
        if split != "po_train" and not self.has_species(split):
            raise GeoplantError(f"split {split!r} has no species (a test split)",
                                path=self.path, fix="use a train split")
        records = self.records(split, columns=["surveyId", "speciesId"])
        survey_ids = np.unique(records["surveyId"].to_numpy(np.int64))
        species = self.species["speciesId"].to_numpy(np.int32)
        rows = np.searchsorted(survey_ids, records["surveyId"].to_numpy(np.int64))
        cols = np.searchsorted(species, records["speciesId"].to_numpy(np.int32))
        data = np.ones(len(rows), dtype=np.uint8)
        matrix = sp.csr_matrix((data, (rows, cols)), shape=(len(survey_ids), len(species)))
        matrix.sum_duplicates()
        matrix.data[:] = 1  # PO may list a species twice in one survey
        return Labels(matrix, survey_ids, species)

    def cube(self, split: str) -> xr.Dataset:
        """The split's modalities as a lazily loaded ``xarray.Dataset`` (dask-backed).

        Opening reads metadata only; index with ``.sel(surveyId=...)`` / ``.isel`` and call
        ``.load()`` or ``.compute()`` to read.
        """
        import xarray as xr

        self._check_split(split, cube=True)
        return xr.open_zarr(self._url("cubes", f"{split}.zarr"), consolidated=False,
                            storage_options=self.storage_options or None)

    def cube_group(self, split: str) -> zarr.Group:
        """The split's cube as a read-only Zarr group (no xarray, no dask).

        The fast path of :class:`geoplant.torch.SurveyDataset` and of the normalisation
        statistics: arrays ``surveyId``, one per modality (surveys on axis 0), ``valid_<m>``
        and the channel coordinates. Read an array with :func:`cube_array`.

        Raises
        ------
        GeoplantError
            If the split has no cube (``po_train`` without PO env) or is not in the store.
        """
        import zarr

        if not self.has_cube(split):
            valid = [s for s in self.splits if self.has_cube(s)]
            raise GeoplantError(f"no cube for split {split!r}", path=self.path,
                                fix=f"use one of: {', '.join(valid)}")
        # zarr refuses storage_options for local paths: pass them only when set
        return zarr.open_group(join_path(self.path, "cubes", f"{split}.zarr"), mode="r",
                               storage_options=self.storage_options or None)

    def rasters(self) -> dict[str, xr.DataArray]:
        """Environmental rasters (lazy ``xarray.DataArray`` each, CRS set via rioxarray)."""
        return open_rasters(self._url("rasters.zarr"), self.manifest.get("rasters", []),
                            self.storage_options)

    @cached_property
    def _rasters_cached(self) -> dict[str, xr.DataArray]:
        return self.rasters()

    def extract(self, lon: Any, lat: Any, variables: Sequence[str] | None = None, *,
                block: int | None = None) -> xr.Dataset:
        """Sample the environmental rasters at points (EPSG:4326 lon/lat).

        Each point takes the value of its raster cell (nearest cell centre, as
        ``.sel(x=..., y=..., method="nearest")`` within half a cell), read lazily with dask
        a block of points at a time; points are reprojected to a raster's CRS when it is not
        EPSG:4326. See :mod:`geoplant.points`.

        Parameters
        ----------
        lon, lat
            Coordinates of the points (array-likes of one length).
        variables
            Raster names (``bio1``, ``landcover``...) or env-cube column names (``Bio1``,
            ``LandCover``...: mapped with :func:`geoplant.maps.raster_source`); None: all.
        block
            Points per block (default :data:`geoplant.points.DEFAULT_BLOCK`).

        Returns
        -------
        xarray.Dataset
            Dim ``point`` with coords ``lon``/``lat``; one float32 variable per raster (named
            like it; NaN outside the grid or at nodata; a multi-band raster keeps a
            ``<name>_band`` dim), a boolean ``valid_<name>`` mask per variable and
            ``inside`` per point. :func:`geoplant.points.point_features` gives the values in
            the env cube's column order.

        Raises
        ------
        GeoplantError
            The store has no rasters, or a variable matches none.
        """
        from geoplant.points import DEFAULT_BLOCK, extract_rasters

        rasters = self._rasters_cached
        if not rasters:
            raise GeoplantError("the store has no environmental rasters", path=self.path,
                                fix="build it with its rasters (geoplant build without "
                                    "--no-rasters)")
        return extract_rasters(rasters, lon, lat, variables, block=block or DEFAULT_BLOCK)

    def info(self) -> dict[str, Any]:
        """A summary: layout, counts, modalities, skipped items, sizes."""
        m = self.manifest
        return {
            "path": self.path, "layout": m["layout"], "created_by": m["created_by"],
            "counts": m["counts"], "modalities": m["modalities"],
            "skipped": m["skipped"]["total"],
            "skipped_by_kind": pd.Series([i["kind"] for i in m["skipped"]["items"]],
                                         dtype=object).value_counts().to_dict(),
            "rasters": len(m.get("rasters", [])),
            "bytes": int(sum(self._fs.du(self._root, total=False).values())),
        }


def open_rasters(url: str, names: Sequence[str],
                 storage_options: dict[str, Any] | None = None) -> dict[str, xr.DataArray]:
    """Rasters of a ``rasters.zarr`` (one group per raster), each a lazy ``DataArray`` with
    its CRS (rioxarray).

    What :meth:`Store.rasters` returns; the build opens the rasters it wrote with it before
    the store has a manifest.

    Parameters
    ----------
    url
        The ``rasters.zarr`` folder or fsspec URL.
    names
        The rasters (groups) to open, in the order returned.
    storage_options
        Passed to fsspec for remote stores.
    """
    import rioxarray  # noqa: F401  (registers .rio)
    import xarray as xr

    out: dict[str, xr.DataArray] = {}
    for name in names:
        ds = xr.open_zarr(url, group=name, consolidated=False, decode_coords="all",
                          storage_options=storage_options or None)
        out[name] = ds[name]
    return out


def cube_array(group: zarr.Group, name: str) -> zarr.Array:
    """The array ``name`` of a cube opened with :meth:`Store.cube_group`.

    A Zarr group member may be an array or a group; this returns it typed as an array.

    Raises
    ------
    GeoplantError
        If ``name`` is a sub-group.
    KeyError
        If the cube has no member ``name``.
    """
    import zarr

    node = group[name]
    if not isinstance(node, zarr.Array):
        raise GeoplantError(f"{name!r} is a group, not an array", path=str(group.store_path))
    return node


def open_store(path: Store | str | os.PathLike[str],
               storage_options: dict[str, Any] | None = None) -> Store:
    """Open a geoplant store (local folder or fsspec URL); an open :class:`Store` is returned
    as is (``storage_options`` then unused)."""
    return path if isinstance(path, Store) else Store(path, storage_options)
