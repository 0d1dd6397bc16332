"""PO env: the ``env`` cube of ``po_train`` (``cubes/po_train.zarr``), so that presence-only
records can feed the same models as the PA surveys. Where the release also ships PO Landsat and
bioclimatic cubes (G26), the cubes phase reads them into the same cube, block by block as the
PA splits' (:func:`po_cube_modalities`); a PO survey without a cube keeps NaN and
``valid_<modality>`` false.

Two sources, chosen per release (the manifest's ``po_env_source``):

``"tables"``
    The release ships PO predictor tables (the GeoPlant 2026 layout): they are read like the
    PA env tables, by the cubes phase (:func:`po_env_from_tables` tells it to).
``"rasters"``
    No PO tables but rasters in the store (the Kaggle GLC24 layout with the Seafile rasters):
    this phase samples the store's rasters at each PO survey's lon/lat with
    :func:`geoplant.points.point_features` (nearest cell, nodata -> NaN, CRS handled), in the
    column order of the PA env cube, so a model fitted on PA env predicts PO sites and back.
    A column no raster holds (its raster skipped as damaged) stays NaN, and the manifest lists
    it (``po_env_columns_without_raster``); the damaged raster is the skipped item.

Neither (the Kaggle competition files alone, or ``--no-rasters``): no PO cube, and the manifest
says ``null``. A survey off every raster's grid keeps NaN values and ``valid_env`` false.

The sampling runs as dask tasks of :data:`~geoplant.builder.spec.PO_ENV_BLOCKS` build blocks
each (whole chunks, so tasks never share one), each opening the rasters itself and reading one
raster chunk at a time: memory per task is bounded by its points (~131k), not by the 3.85M PO
surveys. A finished task leaves a marker in ``_build/po_train/``; a rerun skips marked tasks.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

import numpy as np

from geoplant.builder.cubes import ensure_template, write_env
from geoplant.builder.spec import ENV_FAMILIES, MODALITIES, PO_ENV_BLOCKS
from geoplant.errors import GeoplantError
from geoplant.files import atomic_write_bytes

__all__ = ["PoEnvPlan", "PoEnvSource", "pa_env_columns", "plan_po_env", "po_cube_modalities",
           "po_env_from_tables", "survey_points"]

PoEnvSource = Literal["tables", "rasters"]

#: The PO split, and the PA split whose env cube sets the column order.
_PO: Final = "po_train"
_PA: Final = "pa_train"


@dataclass
class PoEnvPlan:
    """What the PO env phase will do: its tasks, the tasks an earlier run finished, where the
    values come from (``None``: no PO env cube) and the columns left NaN (no raster)."""

    tasks: list[Any] = field(default_factory=list)
    resumed: int = 0
    source: PoEnvSource | None = None
    without_raster: list[str] = field(default_factory=list)


def _env_wanted(splits: Sequence[str], modalities: Sequence[str] | None) -> bool:
    return _PO in splits and (modalities is None or "env" in modalities)


def po_env_from_tables(raw: Any, splits: Sequence[str],
                       modalities: Sequence[str] | None) -> bool:
    """Whether ``po_train`` gets its env from the release's PO env tables.

    Only when the layout has them for ``po_train`` and every one is on disk: a release
    without them (or with some missing) falls back to the rasters.
    """
    if not _env_wanted(splits, modalities):
        return False
    families = [f for f in raw.families(_PO) if f.startswith("env.")]
    return bool(families) and all(raw.exists(raw.location(f, _PO)) for f in families)


def po_cube_modalities(raw: Any, splits: Sequence[str], modalities: Sequence[str] | None,
                       po_tables: bool) -> list[str]:
    """The modalities of ``po_train``'s cube read by the cubes phase (empty: none there).

    ``env`` when it comes from the PO env tables (``po_tables``), and each per-survey
    modality (the G26 Landsat and bioclimatic cubes) whose archive or folder is on disk: a
    release without them has no such PO modality rather than one skipped item per survey.
    Not where the PO env is sampled from the rasters: that phase writes the cube itself.

    Parameters
    ----------
    raw
        The :class:`geoplant.raw.RawRelease` built.
    splits, modalities
        What the build was asked for.
    po_tables
        Whether the PO env comes from the tables (:func:`po_env_from_tables`).
    """
    from geoplant.builder.spec import split_modalities

    if _PO not in splits or (_env_wanted(splits, modalities) and not po_tables):
        return []
    return [m for m in split_modalities(raw, _PO, modalities)
            if (po_tables if m == "env"
                else bool(raw.source_paths([_PO], [MODALITIES[m]["family"]])))]


def pa_env_columns(raw: Any, store: Path) -> list[str]:
    """The PA env cube's columns (``env_variable`` of ``pa_train``): the PO env's order.

    Read from the ``pa_train`` cube built before this phase, else from the headers of the
    release's PA env tables (a build of ``po_train`` alone); empty without either.
    """
    import zarr

    from geoplant.store import cube_array

    cube = store / "cubes" / f"{_PA}.zarr"
    if (cube / "env_variable" / "zarr.json").exists():
        names = np.asarray(cube_array(zarr.open_group(str(cube), mode="r"), "env_variable")[:])
        return [str(c) for c in names]
    if _PA not in raw.splits:
        return []
    columns: list[str] = []
    for family in ENV_FAMILIES:
        key = f"env.{family}"
        if key in raw.families(_PA) and raw.exists(raw.location(key, _PA)):
            columns += [c for c in raw.read_env(family, _PA).columns if c != "surveyId"]
    return columns


def survey_points(records: Path, survey_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each survey's lon/lat (its first record's, in file order), in ``survey_ids`` order.

    Raises
    ------
    GeoplantError
        The records' surveys are not ``survey_ids`` (records changed under the build).
    """
    import pyarrow.parquet as pq

    table = pq.read_table(records, columns=["surveyId", "lon", "lat"])
    ids = table.column("surveyId").to_numpy()
    # return_index sorts stably: the first record of each survey
    uniq, first = np.unique(ids, return_index=True)
    if not np.array_equal(uniq, survey_ids):
        raise GeoplantError("the records' surveys differ from the build's", path=records,
                            fix="rerun the build with --overwrite")
    lon = table.column("lon").to_numpy()[first]
    lat = table.column("lat").to_numpy()[first]
    return lon.astype(np.float64), lat.astype(np.float64)


def plan_po_env(raw: Any, store: Path, splits: Sequence[str],
                modalities: Sequence[str] | None, survey_ids: dict[str, np.ndarray],
                raster_names: Sequence[str], block_surveys: int) -> PoEnvPlan:
    """Plan the sampling of ``po_train``'s env from the store's rasters (if it applies).

    It applies when ``po_train`` and ``env`` are built, the release has no PO env tables
    (:func:`po_env_from_tables`), the store has rasters and the PA env has columns. A column
    no raster holds stays NaN (listed in the plan's ``without_raster``).

    Parameters
    ----------
    raw
        The :class:`geoplant.raw.RawRelease` built.
    store
        The store folder (its ``rasters.zarr`` and ``records/po_train.parquet`` written).
    splits, modalities
        What the build was asked for.
    survey_ids
        Per split, its sorted surveyIds.
    raster_names
        The rasters in the store.
    block_surveys
        Surveys per build block (the cube's chunk along ``surveyId``).

    Returns
    -------
    PoEnvPlan
        One dask task per unfinished block of ``PO_ENV_BLOCKS`` build blocks.
    """
    if not raster_names or po_env_from_tables(raw, splits, modalities) \
            or not _env_wanted(splits, modalities):
        return PoEnvPlan()
    columns = pa_env_columns(raw, store)
    if not columns:
        return PoEnvPlan()
    sampled = _sampled_columns(columns, raster_names)
    ids = survey_ids[_PO]
    lon, lat = survey_points(store / "records" / f"{_PO}.parquet", ids)
    # what the values are made of: a rerun with other rasters redoes every block
    variant = json.dumps(["rasters", list(raster_names)])
    cube_path = ensure_template(store, _PO, ids, ["env"], columns, block_surveys, variant)
    done_dir = store / "_build" / _PO
    done_dir.mkdir(exist_ok=True)
    plan = _tasks(store, cube_path, done_dir, (lon, lat), columns, sampled, raster_names,
                  block_surveys * PO_ENV_BLOCKS)
    plan.without_raster = [c for c in columns if c not in {name for _, name in sampled}]
    return plan


def _sampled_columns(columns: Sequence[str],
                     raster_names: Sequence[str]) -> list[tuple[int, str]]:
    """``(position, column)`` of the columns some raster holds."""
    from geoplant.points import raster_columns

    sampled: list[tuple[int, str]] = []
    for j, column in enumerate(columns):
        try:
            raster_columns([column], raster_names)
        except GeoplantError:
            continue  # its raster is missing or damaged (that raster is the skipped item)
        sampled.append((j, column))
    return sampled


def _tasks(store: Path, cube_path: Path, done_dir: Path, points: tuple[np.ndarray, np.ndarray],
           columns: Sequence[str], sampled: list[tuple[int, str]],
           raster_names: Sequence[str], task_surveys: int) -> PoEnvPlan:
    """One delayed task per unfinished block of ``task_surveys`` surveys."""
    import dask

    from geoplant.points import raster_columns

    lon, lat = points
    names = [c for _, c in sampled]
    # only the rasters the columns read are opened by the tasks
    rasters = list(dict.fromkeys(r for r, _ in raster_columns(names, raster_names)))
    plan = PoEnvPlan(source="rasters")
    for start in range(0, len(lon), task_surveys):
        marker = done_dir / f"block-{start:09d}.json"
        if marker.exists():
            plan.resumed += 1
            continue
        sl = slice(start, start + task_surveys)
        plan.tasks.append(dask.delayed(_sample_block, pure=False)(
            str(store / "rasters.zarr"), rasters, str(cube_path), start, lon[sl], lat[sl],
            names, [j for j, _ in sampled], len(columns), str(marker)))
    return plan


def _sample_block(rasters_url: str, raster_names: Sequence[str], cube_path: str, start: int,
                  lon: np.ndarray, lat: np.ndarray, columns: Sequence[str],
                  positions: Sequence[int], n_columns: int, marker: str) -> dict[str, Any]:
    """Sample one block of PO surveys and write its region of the cube, then its marker.

    The rasters are opened here, not passed in: a lazy raster given to a dask task would be
    computed whole as its input. Their chunks are read synchronously: the task already runs
    on the build's pool, which bounds the memory to one chunk per worker.
    """
    import zarr

    from geoplant.points import point_features
    from geoplant.store import open_rasters

    values = np.full((len(lon), n_columns), np.nan, dtype=np.float32)
    if columns:
        rasters = open_rasters(rasters_url, raster_names)
        values[:, list(positions)] = point_features(rasters, lon, lat, columns,
                                                    block=max(1, len(lon)),
                                                    scheduler="synchronous")
    group = zarr.open_group(cube_path, mode="r+")
    write_env(group, slice(start, start + len(lon)), values)
    result = {"split": _PO, "start": start, "n": len(lon), "skipped": []}
    atomic_write_bytes(marker, json.dumps(result).encode())
    return result
