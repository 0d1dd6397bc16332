"""``geoplant build``: a raw GeoPlant release into a store: GeoParquet records + Zarr v3 cubes +
manifest.

Layout of a store::

    manifest.json                    sources (size, sha256), counts, skipped items, versions
    species.parquet                  speciesId <-> column index, counts in PO and PA
    records/<split>.parquet          GeoParquet (EPSG:4326), typed columns
    cubes/<split>.zarr               xarray Dataset, leading dimension surveyId:
        sentinel2       (surveyId, s2_band, y, x)          uint8  4x128x128 (JPEG pairs)
        sentinel2_tiff  (surveyId, s2_band, tiff_y, tiff_x) int16  4x64x64 (G26 GeoTIFFs)
        landsat         (surveyId, landsat_band, quarter, landsat_year)  float32 6x4x21
        climate         (surveyId, climate_variable, climate_year, month) float32 4x19x12
        env             (surveyId, env_variable)           float32
        valid_<modality> (surveyId,)                      bool: the survey's item was read
    cubes/po_train.zarr              env only, in the PA env's columns: from the PO env tables,
                                     else sampled from the rasters (manifest po_env_source)
    rasters.zarr/<name>              environmental rasters, spatially chunked, with CRS
    _build/                          markers of finished work (resume); removed when complete
    .geoplant-build.lock             held while a build writes the store (pid, host, start)

Per-survey modalities are written block by block (:data:`BLOCK_SURVEYS` surveys, a whole number
of chunks along ``surveyId``), each block a dask task that reads its raw files and writes its
own region, so blocks never share a chunk and run in any order, on the local scheduler or a
dask.distributed cluster. A finished block leaves a marker; a rerun skips marked blocks, so a
killed build resumes where it stopped and ends with the same bytes.

Markers record what was read, never a verdict that could outlive a repair: a block (or a split's
records, or a raster) with a skipped item gets no marker, so a rerun reads it again. A cube's
empty template is marked complete only once fully written; a rerun rebuilds a half-written one.
One build writes a store at a time (the lock file); a stale lock (its holder is gone) is taken
over.

One module per concern, the public names re-exported here:

:mod:`geoplant.builder.core`
    :func:`build` (phase by phase) and :class:`BuildSummary`.
:mod:`geoplant.builder.spec`
    :data:`MODALITIES` and their arrays, :data:`BLOCK_SURVEYS`, :data:`CHUNK_SURVEYS`,
    :data:`MAX_SPECIES_ID`; the check of the requested splits and modalities.
:mod:`geoplant.builder.lock`
    The store lock (:data:`LOCK_NAME`): one writer at a time, stale locks taken over.
:mod:`geoplant.builder.output`
    The ``--out`` folder: refused if it holds no store, cleared, leftovers removed, resumed
    with the same settings, marked complete.
:mod:`geoplant.builder.records`, :mod:`geoplant.builder.cubes`, :mod:`geoplant.builder.rasters`
    The phases that read the release: GeoParquet records, per-survey cubes, rasters.
:mod:`geoplant.builder.po_env`
    The PO env cube: the PO env tables where the release has them, else the store's rasters
    sampled at each PO survey (dask tasks, resumable like the cube blocks).
:mod:`geoplant.builder.tasks`
    Running cube blocks on local threads or a dask.distributed cluster.
:mod:`geoplant.builder.manifest`
    Sources read, species table, statistics, ``manifest.json``.
:mod:`geoplant.builder.skips`, :mod:`geoplant.builder.storefiles`
    Bad items (listed, or fatal under ``--strict``); writing the store's files.
:mod:`geoplant.builder.cli`
    The ``geoplant build`` command.

The package is ``builder``, not ``build``: a submodule ``geoplant.build`` would replace the
function :func:`geoplant.build` as soon as it is imported.
"""

from geoplant.builder.cli import configure_parser, run
from geoplant.builder.core import BuildSummary, build
from geoplant.builder.lock import LOCK_NAME
from geoplant.builder.spec import BLOCK_SURVEYS, CHUNK_SURVEYS, MAX_SPECIES_ID, MODALITIES

__all__ = [
    "BLOCK_SURVEYS",
    "CHUNK_SURVEYS",
    "LOCK_NAME",
    "MAX_SPECIES_ID",
    "MODALITIES",
    "BuildSummary",
    "build",
    "configure_parser",
    "run",
]
