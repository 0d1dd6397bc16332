"""Open a built store lazily: records as (Geo)DataFrames, labels as sparse matrices, cubes as
dask-backed xarray Datasets, rasters as DataArrays. Paths may be local or any fsspec URL."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd

from geoplant.errors import GeoplantError


def _join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *parts])


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

    matrix: Any
    survey_ids: np.ndarray
    species_ids: np.ndarray


class Store:
    """A geoplant store built by ``geoplant build`` (see :mod:`geoplant.build`).

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
        manifest = _join(self._root, "manifest.json")
        if not self._fs.exists(manifest):
            hint = ("the build was interrupted: rerun the same `geoplant build` to finish it"
                    if self._fs.exists(_join(self._root, "_build"))
                    else "build one with `geoplant build RAW --out STORE`")
            raise GeoplantError("not a geoplant store (no manifest.json)", path=self.path,
                                fix=hint)
        with self._fs.open(manifest, "r") as handle:
            self.manifest: dict[str, Any] = json.load(handle)

    def __repr__(self) -> str:
        counts = self.manifest.get("counts", {})
        return (f"Store({self.path!r}, layout={self.manifest.get('layout')!r}, "
                f"splits={self.splits}, species={counts.get('species')})")

    @property
    def splits(self) -> list[str]:
        """Splits in the store."""
        return list(self.manifest["splits"])

    def _check_split(self, split: str, *, cube: bool = False) -> None:
        valid = [s for s in self.splits if not (cube and s == "po_train")]
        if split not in valid:
            raise GeoplantError(f"no split {split!r} in this store", path=self.path,
                                fix=f"use one of: {', '.join(valid)}")

    def _url(self, *parts: str) -> str:
        protocol = self._fs.protocol if isinstance(self._fs.protocol, str) else \
            self._fs.protocol[0]
        root = _join(self._root, *parts)
        return root if protocol in ("file", "local") else f"{protocol}://{root}"

    @cached_property
    def species(self) -> pd.DataFrame:
        """Species table: ``index`` (label column), ``speciesId``, record counts per split."""
        with self._fs.open(_join(self._root, "species.parquet"), "rb") as handle:
            return pd.read_parquet(handle)

    def records(self, split: str, *, geo: bool = False,
                columns: list[str] | None = None) -> pd.DataFrame:
        """Records of a split (one row per record; PA train: per survey x species).

        Parameters
        ----------
        split
            e.g. ``"po_train"``, ``"pa_train"``, ``"pa_test"``.
        geo
            Return a ``geopandas.GeoDataFrame`` (EPSG:4326 points) instead of a DataFrame.
        columns
            Subset of columns to read (Parquet column projection).
        """
        self._check_split(split)
        path = _join(self._root, "records", f"{split}.parquet")
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
        records = self.records(split, columns=["surveyId", "speciesId"]) \
            if split == "po_train" or "speciesId" in self._columns(split) else None
        if records is None:
            raise GeoplantError(f"split {split!r} has no species (a test split)",
                                path=self.path, fix="use a train split")
        survey_ids = np.unique(records["surveyId"].to_numpy(np.int64))
        species = self.species["speciesId"].to_numpy(np.int32)
        rows = np.searchsorted(survey_ids, records["surveyId"].to_numpy(np.int64))
        cols = np.searchsorted(species, records["speciesId"].to_numpy(np.int32))
        data = np.ones(len(rows), dtype=np.uint8)
        matrix = sp.csr_matrix((data, (rows, cols)), shape=(len(survey_ids), len(species)))
        matrix.sum_duplicates()
        matrix.data[:] = 1  # PO may list a species twice in one survey
        return Labels(matrix, survey_ids, species)

    def _columns(self, split: str) -> list[str]:
        import pyarrow.parquet as pq

        return pq.read_schema(_join(self._root, "records", f"{split}.parquet"),
                              filesystem=self._fs).names

    def cube(self, split: str) -> Any:
        """The split's modalities as a lazily loaded ``xarray.Dataset`` (dask-backed).

        Opening reads metadata only; index with ``.sel(surveyId=...)`` / ``.isel`` and call
        ``.load()`` or ``.compute()`` to read.
        """
        import xarray as xr

        self._check_split(split, cube=True)
        return xr.open_zarr(self._url("cubes", f"{split}.zarr"), consolidated=False,
                            storage_options=self.storage_options or None)

    def rasters(self) -> dict[str, Any]:
        """Environmental rasters (lazy ``xarray.DataArray`` each, CRS set via rioxarray)."""
        import rioxarray  # noqa: F401  (registers .rio)
        import xarray as xr

        out = {}
        for name in self.manifest.get("rasters", []):
            ds = xr.open_zarr(self._url("rasters.zarr"), group=name, consolidated=False,
                              decode_coords="all",
                              storage_options=self.storage_options or None)
            out[name] = ds[name]
        return out

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


def open_store(path: str | os.PathLike[str],
               storage_options: dict[str, Any] | None = None) -> Store:
    """Open a geoplant store (local folder or fsspec URL)."""
    return Store(path, storage_options)
