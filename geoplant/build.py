"""Build a raw GeoPlant release into a store: GeoParquet records + Zarr v3 cubes + manifest.

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
    rasters.zarr/<name>              environmental rasters, spatially chunked, with CRS
    _build/                          markers of finished work (resume); removed when complete

Per-survey modalities are written block by block (:data:`BLOCK_SURVEYS` surveys, a whole number
of chunks along ``surveyId``), each block a dask task that reads its raw files and writes its
own region, so blocks never share a chunk and run in any order, on the local scheduler or a
dask.distributed cluster. A finished block leaves a marker; a rerun skips marked blocks, so a
killed build resumes where it stopped and ends with the same bytes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any, Final

import numpy as np
import pandas as pd

from geoplant import __version__, layouts
from geoplant.errors import GeoplantError
from geoplant.files import atomic_write_bytes, sha256_file
from geoplant.store import cube_array

#: Per-survey modalities, their raw family and array layout.
MODALITIES: Final[dict[str, dict[str, Any]]] = {
    "sentinel2": {"family": "s2.rgb", "dims": ("s2_band", "y", "x"), "shape": (4, 128, 128),
                  "dtype": "uint8", "fill": 0,
                  "coords": {"s2_band": ["red", "green", "blue", "nir"]}},
    "sentinel2_tiff": {"family": "s2.tiff", "dims": ("s2_band", "tiff_y", "tiff_x"),
                       "shape": (4, 64, 64), "dtype": "int16", "fill": -1,
                       "coords": {"s2_band": ["red", "green", "blue", "nir"]}},
    "landsat": {"family": "landsat.cube", "dims": ("landsat_band", "quarter", "landsat_year"),
                "shape": (6, 4, 21), "dtype": "float32", "fill": np.nan,
                "coords": {"landsat_band": list(layouts.LANDSAT_BANDS),
                           "quarter": list(layouts.LANDSAT_QUARTERS),
                           "landsat_year": list(layouts.LANDSAT_YEARS)}},
    "climate": {"family": "climate.cube", "dims": ("climate_variable", "climate_year", "month"),
                "shape": (4, 19, 12), "dtype": "float32", "fill": np.nan,
                "coords": {"climate_variable": list(layouts.CLIMATE_VARIABLES),
                           "climate_year": list(layouts.CLIMATE_YEARS),
                           "month": list(layouts.CLIMATE_MONTHS)}},
    "env": {"family": "env.bioclimatic", "dims": ("env_variable",), "shape": None,
            "dtype": "float32", "fill": np.nan, "coords": {}},
}
#: Surveys per build block (and per chunk of the non-image arrays).
BLOCK_SURVEYS: Final = 1024
#: Surveys per inner chunk of the image modalities (the unit of a random read).
CHUNK_SURVEYS: Final = 4
#: Highest valid speciesId (GLC24: num_classes = 11255).
MAX_SPECIES_ID: Final = 11_254
_ENV_FAMILIES: Final = ("bioclimatic", "elevation", "human_footprint", "landcover", "soilgrids")


@dataclass
class BuildSummary:
    """What :func:`build` did."""

    store: Path
    counts: dict[str, int]
    skipped: list[dict[str, Any]]
    blocks_done: int
    blocks_resumed: int
    seconds: float
    #: Wall time per phase: records, cubes (the per-survey blocks), rasters, sources, stats.
    phase_seconds: dict[str, float] = field(default_factory=dict)
    manifest: dict[str, Any] = field(repr=False, default_factory=dict)


class _Skips:
    """Bad items: counted and listed, or fatal under ``--strict``."""

    def __init__(self, strict: bool) -> None:
        self.strict = strict
        self.items: list[dict[str, Any]] = []

    def add(self, split: str, kind: str, reason: str, *, survey_id: int | None = None,
            file: str | None = None, line: int | None = None) -> None:
        item = {"split": split, "kind": kind, "surveyId": survey_id, "file": file, "line": line,
                "reason": reason}
        if self.strict:
            raise GeoplantError(f"{kind} of survey {survey_id}: {reason}" if survey_id
                                else f"{kind}: {reason}", path=file,
                                fix="repair or re-download the file, or build without --strict "
                                    "to skip bad items")
        self.items.append(item)


def _versions() -> dict[str, str]:
    out = {"geoplant": __version__, "python": platform.python_version()}
    for name in ("numpy", "pandas", "pyarrow", "xarray", "zarr", "dask", "distributed",
                 "geopandas", "rasterio", "rioxarray", "torch"):
        with contextlib.suppress(importlib_metadata.PackageNotFoundError):
            out[name] = importlib_metadata.version(name)
    return out


@contextlib.contextmanager
def _timed(phases: dict[str, float], name: str) -> Iterator[None]:
    """Record the wall time of the ``with`` body as ``phases[name]``."""
    mark = time.perf_counter()
    yield
    phases[name] = time.perf_counter() - mark


# ---------------------------------------------------------------------------------------------
# settings and resume


def _check_request(raw: Any, splits: Sequence[str] | None,
                   modalities: Sequence[str] | None) -> list[str]:
    """The splits to build (default: all of the layout's); unknown splits or modalities fail."""
    all_splits = raw.splits
    chosen = list(splits or all_splits)
    unknown = [s for s in chosen if s not in all_splits]
    if unknown:
        raise GeoplantError(f"unknown split(s) {', '.join(unknown)} for layout {raw.layout}",
                            fix=f"use some of: {', '.join(all_splits)}")
    if modalities is not None:
        bad = [m for m in modalities if m not in MODALITIES]
        if bad:
            raise GeoplantError(f"unknown modality {', '.join(bad)}",
                                fix=f"use some of: {', '.join(MODALITIES)}")
    return chosen


def _prepare_store(store: Path, settings: dict[str, Any]) -> None:
    """Create the store's folders, or resume an interrupted build made with the same settings.

    A complete store (a manifest and no ``_build/``) is never overwritten.
    """
    if store.exists() and (store / "manifest.json").exists() and \
            not (store / "_build").exists():
        raise GeoplantError("a complete store already exists here", path=store,
                            fix="choose another --out or delete it to rebuild")
    try:
        for sub in ("records", "cubes", "_build"):
            (store / sub).mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise GeoplantError(f"cannot write the store ({err.strerror or err})", path=store,
                            fix="choose a writable --out") from None
    settings_file = store / "_build" / "settings.json"
    if settings_file.exists() and json.loads(settings_file.read_text()) != settings:
        raise GeoplantError("an interrupted build with other settings is here", path=store,
                            fix=f"rerun it with the same options ({settings_file.read_text()}) "
                                "or delete the folder")
    settings_file.write_text(json.dumps(settings))


def _split_modalities(raw: Any, split: str, modalities: Sequence[str] | None) -> list[str]:
    """The requested modalities (default: all) that a split has files for."""
    return [m for m in (modalities or MODALITIES) if MODALITIES[m]["family"] in raw.families(split)]


# ---------------------------------------------------------------------------------------------
# records


def _species_ok(frame: pd.DataFrame, split: str, skips: _Skips, file: str) -> pd.DataFrame:
    if "speciesId" not in frame:
        return frame
    bad = (frame["speciesId"] < 0) | (frame["speciesId"] > MAX_SPECIES_ID)
    for sid, spid in frame.loc[bad, ["surveyId", "speciesId"]].itertuples(index=False):
        skips.add(split, "record", f"unknown speciesId {spid} (valid: 0..{MAX_SPECIES_ID})",
                  survey_id=int(sid), file=file)
    return frame.loc[~bad]


def _to_geo_table(frame: pd.DataFrame) -> Any:
    """Records as an Arrow table with a WKB point ``geometry`` column (GeoParquet encoding)."""
    import pyarrow as pa
    import shapely

    table = pa.Table.from_pandas(frame, preserve_index=False)
    points = shapely.points(frame["lon"].to_numpy(), frame["lat"].to_numpy())
    return table.append_column("geometry", pa.array(shapely.to_wkb(points), type=pa.binary()))


def _geo_metadata(table: Any) -> dict[bytes, bytes]:
    """Schema metadata of a GeoParquet 1.1 file of EPSG:4326 points."""
    from pyproj import CRS

    meta = dict(table.schema.metadata or {})
    meta[b"geo"] = json.dumps({
        "version": "1.1.0", "primary_column": "geometry",
        "columns": {"geometry": {"encoding": "WKB", "geometry_types": ["Point"],
                                 "crs": CRS.from_epsg(4326).to_json_dict()}},
    }).encode()
    return meta


def _write_records(raw: Any, split: str, target: Path, skips: _Skips,
                   progress: bool) -> tuple[np.ndarray, pd.Series]:
    """Stream a split's metadata into GeoParquet; return its surveyIds and species counts."""
    import pyarrow.parquet as pq
    from tqdm.auto import tqdm

    from geoplant.raw import RowProblem

    problems: list[RowProblem] = []
    family = "metadata.po" if split == "po_train" else "metadata.pa"
    file = raw.describe(raw.location(family, split))
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    writer = None
    ids: list[np.ndarray] = []
    species_counts = pd.Series(dtype=np.int64)
    try:
        chunks = raw.iter_metadata(split, bad_rows="drop", problems=problems)
        for chunk in tqdm(chunks, desc=f"records {split}", unit="chunk", disable=not progress):
            chunk = _species_ok(chunk, split, skips, file)
            ids.append(chunk["surveyId"].to_numpy(np.int64))
            if "speciesId" in chunk:
                species_counts = species_counts.add(chunk["speciesId"].value_counts(),
                                                    fill_value=0)
            table = _to_geo_table(chunk)
            if writer is None:
                schema = table.schema.with_metadata(_geo_metadata(table))
                writer = pq.ParquetWriter(tmp, schema, compression="zstd")
            writer.write_table(table.cast(writer.schema), row_group_size=1 << 18)
        if writer is None:
            raise GeoplantError("no records", path=file, fix="check the file is complete")
    finally:
        if writer is not None:
            writer.close()
    os.replace(tmp, target)
    for p in problems:
        skips.add(split, "record", p.problem, survey_id=p.survey_id, file=p.file, line=p.line)
    survey_ids = np.unique(np.concatenate(ids)) if ids else np.empty(0, np.int64)
    return survey_ids, species_counts.astype(np.int64)


def _split_records(raw: Any, store: Path, split: str, skips: _Skips,
                   progress: bool) -> tuple[np.ndarray, pd.Series]:
    """Write a split's records, or reload what an earlier run of this build finished."""
    target = store / "records" / f"{split}.parquet"
    marker = store / "_build" / f"records-{split}.json"
    ids_file = marker.with_suffix(".npy")
    if marker.exists():  # resume: the records were finished before
        saved = json.loads(marker.read_text())
        species_counts = pd.Series(saved["species_counts"], dtype=np.int64)
        species_counts.index = species_counts.index.astype(np.int64)
        skips.items += saved["skipped"]
        return np.load(ids_file), species_counts
    before = len(skips.items)
    ids, species_counts = _write_records(raw, split, target, skips, progress)
    np.save(ids_file, ids)
    atomic_write_bytes(marker, json.dumps({
        "skipped": skips.items[before:],
        "species_counts": {str(k): int(v) for k, v in species_counts.items()}}).encode())
    return ids, species_counts


@dataclass
class _Records:
    """What the records phase found: per split, its surveys and species counts."""

    survey_ids: dict[str, np.ndarray] = field(default_factory=dict)
    species_counts: dict[str, pd.Series] = field(default_factory=dict)
    #: ``<split>_surveys`` and ``<split>_records`` of every split, in split order.
    counts: dict[str, int] = field(default_factory=dict)


def _build_records(raw: Any, store: Path, splits: Sequence[str], skips: _Skips,
                   progress: bool) -> _Records:
    """Records phase: every split's metadata to GeoParquet (resumable per split)."""
    records = _Records()
    for split in splits:
        ids, species_counts = _split_records(raw, store, split, skips, progress)
        records.survey_ids[split], records.species_counts[split] = ids, species_counts
        records.counts[f"{split}_surveys"] = len(ids)
        # PA test metadata has no species: a survey is one record there
        records.counts[f"{split}_records"] = int(species_counts.sum()) if len(
            species_counts) else len(ids)
    return records


# ---------------------------------------------------------------------------------------------
# cubes


def _env_table(raw: Any, split: str, survey_ids: np.ndarray,
               skips: _Skips) -> tuple[np.ndarray, list[str]]:
    """All pre-extracted env values of a split as (n, variables) float32 in survey order."""
    columns: list[str] = []
    blocks: list[np.ndarray] = []
    for family in _ENV_FAMILIES:
        if f"env.{family}" not in raw.families(split):
            continue
        table = raw.read_env(family, split).set_index("surveyId")
        missing = np.setdiff1d(survey_ids, table.index.to_numpy())
        for sid in missing:
            skips.add(split, "env", f"no row in the {family} values", survey_id=int(sid),
                      file=raw.describe(raw.location(f"env.{family}", split)))
        values = table.reindex(survey_ids).to_numpy(np.float32)
        blocks.append(values)
        columns += list(table.columns)
    return np.concatenate(blocks, axis=1), columns


def _template(split: str, survey_ids: np.ndarray, modalities: Sequence[str],
              env_columns: list[str], block_surveys: int) -> Any:
    import dask.array as da
    import xarray as xr
    from zarr.codecs import BloscCodec

    n = len(survey_ids)
    data_vars: dict[str, Any] = {}
    encoding: dict[str, Any] = {}
    coords: dict[str, Any] = {"surveyId": ("surveyId", survey_ids)}
    block = block_surveys
    for name in modalities:
        spec = MODALITIES[name]
        shape = (len(env_columns),) if name == "env" else spec["shape"]
        data_vars[name] = (("surveyId", *spec["dims"]),
                           da.full((n, *shape), spec["fill"], dtype=spec["dtype"],
                                   chunks=(block, *shape)))
        if name.startswith("sentinel2"):
            # Small chunks for random reads. No Zarr v3 sharding: zarr-python reads a few
            # inner chunks of a shard 2-5x slower than plain chunks (benchmarks/RESULTS.md),
            # and 4-survey chunks of the PA splits are ~25k files.
            # lz4: zstd saves little on JPEG-decoded pixels but costs ~2.5 ms per chunk read.
            encoding[name] = {"chunks": (CHUNK_SURVEYS, *shape), "compressors": [
                BloscCodec(cname="lz4", clevel=5, shuffle="noshuffle")]}
        else:
            encoding[name] = {"chunks": (block, *shape)}
        encoding[name]["fill_value"] = spec["fill"]
        for dim, values in spec["coords"].items():
            # object dtype -> Zarr v3 variable-length strings (fixed-width UTF-32 has no spec)
            coords.setdefault(dim, (dim, np.asarray(values, dtype=object)
                                    if isinstance(values[0], str) else values))
        valid = f"valid_{name}"
        data_vars[valid] = (("surveyId",), da.zeros(n, dtype=bool, chunks=block))
        encoding[valid] = {"chunks": (block,)}
    if "env" in modalities:
        coords["env_variable"] = ("env_variable", np.asarray(env_columns, dtype=object))
    ds = xr.Dataset(data_vars, coords=coords, attrs={"split": split, "geoplant": __version__})
    return ds, encoding


def _block_task(raw: Any, cube_path: str, split: str, start: int, survey_ids: np.ndarray,
                modalities: Sequence[str], env_values: np.ndarray | None,
                marker: str) -> dict[str, Any]:
    """Read one block of surveys' raw files and write them to their region of the Zarr store."""
    import zarr

    group = zarr.open_group(cube_path, mode="r+")
    stop = start + len(survey_ids)
    skipped: list[dict[str, Any]] = []
    readers: dict[str, Callable[..., Any]] = {
        "sentinel2": raw.read_s2_jpegs, "sentinel2_tiff": raw.read_s2_tiffs,
        "landsat": raw.read_landsat_cubes, "climate": raw.read_climate_cubes,
    }
    for name in modalities:
        if name == "env":
            assert env_values is not None
            cube_array(group, "env")[start:stop] = env_values
            cube_array(group, "valid_env")[start:stop] = ~np.isnan(env_values).all(axis=1)
            continue
        batch = readers[name](split, survey_ids, on_error="skip")
        cube_array(group, name)[start:stop] = batch.data
        cube_array(group, f"valid_{name}")[start:stop] = batch.ok
        for sid, err in sorted(batch.errors.items()):
            skipped.append({"split": split, "kind": name, "surveyId": int(sid),
                            "file": err.path, "line": None, "reason": err.problem})
    result = {"start": start, "n": len(survey_ids), "skipped": skipped}
    atomic_write_bytes(marker, json.dumps(result).encode())
    return result


def _plan_cube_blocks(raw: Any, store: Path, split: str, modalities: Sequence[str],
                      survey_ids: np.ndarray, skips: _Skips,
                      block_surveys: int) -> tuple[list[Any], int]:
    """Create a split's cube (empty) unless it exists; one delayed task per unfinished block.

    Returns the tasks and the number of blocks an earlier run already finished.
    """
    import dask

    cube_path = store / "cubes" / f"{split}.zarr"
    done_dir = store / "_build" / split
    done_dir.mkdir(exist_ok=True)
    env_values: np.ndarray | None = None
    env_columns: list[str] = []
    if "env" in modalities:
        env_values, env_columns = _env_table(raw, split, survey_ids, skips)
    if not (cube_path / "zarr.json").exists():
        ds, encoding = _template(split, survey_ids, modalities, env_columns, block_surveys)
        ds.to_zarr(str(cube_path), mode="w", compute=False, zarr_format=3,
                   encoding=encoding, consolidated=False)
    tasks: list[Any] = []
    resumed = 0
    for start in range(0, len(survey_ids), block_surveys):
        marker = done_dir / f"block-{start:09d}.json"
        if marker.exists():
            resumed += 1
            continue
        block_ids = survey_ids[start : start + block_surveys]
        block_env = None if env_values is None else env_values[start : start + len(block_ids)]
        tasks.append(dask.delayed(_block_task, pure=False)(
            raw, str(cube_path), split, start, block_ids, modalities, block_env, str(marker)))
    return tasks, resumed


def _plan_cubes(raw: Any, store: Path, cube_modalities: dict[str, list[str]],
                survey_ids: dict[str, np.ndarray], skips: _Skips,
                block_surveys: int) -> tuple[list[Any], int]:
    """Plan the cubes of every split (see :func:`_plan_cube_blocks`): tasks, blocks resumed."""
    tasks: list[Any] = []
    resumed = 0
    for split, modalities in cube_modalities.items():
        split_tasks, split_resumed = _plan_cube_blocks(raw, store, split, modalities,
                                                       survey_ids[split], skips, block_surveys)
        tasks += split_tasks
        resumed += split_resumed
    return tasks, resumed


def _add_block_skips(store: Path, splits: Iterable[str], skips: _Skips) -> None:
    """Count the skipped items of every block, finished now or in an earlier run."""
    for split in splits:
        for marker in sorted((store / "_build" / split).glob("block-*.json")):
            for item in json.loads(marker.read_text())["skipped"]:
                skips.add(**{k: item[k] for k in ("split", "kind", "reason")},
                          survey_id=item["surveyId"], file=item["file"], line=item["line"])


def _run_tasks(tasks: list[Any], scheduler: str | None, workers: int | None, desc: str,
               progress: bool) -> list[dict[str, Any]]:
    """Compute dask delayed tasks with a progress bar, locally or on a distributed cluster."""
    import dask
    from tqdm.auto import tqdm

    if not tasks:
        return []
    if scheduler:
        from distributed import Client, as_completed

        with Client(scheduler) as client:
            futures = client.compute(tasks)
            results = []
            for future in tqdm(as_completed(futures), total=len(futures), desc=desc,
                               disable=not progress):
                results.append(future.result())
            return results
    from dask.callbacks import Callback

    bar = tqdm(total=len(tasks), desc=desc, disable=not progress)
    keys = {t.key for t in tasks}

    class _Bar(Callback):
        def _posttask(self, key: Any, result: Any, dsk: Any, state: Any, id: Any) -> None:
            if key in keys:
                bar.update(1)

    try:
        with _Bar():
            return list(dask.compute(*tasks, scheduler="threads", num_workers=workers or
                                     os.cpu_count()))
    finally:
        bar.close()


# ---------------------------------------------------------------------------------------------
# rasters and sources


def _write_rasters(raw: Any, target: Path, progress: bool, skips: _Skips) -> list[str]:
    import xarray as xr
    from tqdm.auto import tqdm

    done_dir = target.parent / "_build" / "rasters"
    done_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name in tqdm(raw.raster_names(), desc="rasters", disable=not progress):
        marker = done_dir / f"{name}.done"
        if marker.exists():
            written.append(name)
            continue
        try:
            array = raw.raster(name, chunks={"x": 512, "y": 512})
        except GeoplantError as err:
            skips.add("rasters", "raster", err.problem, file=err.path)
            continue
        ds = xr.Dataset({name: array.rename(None)})
        ds[name].encoding = {}
        ds = ds.chunk({"x": 512, "y": 512})
        ds.to_zarr(str(target), group=name, mode="w", zarr_format=3, consolidated=False)
        marker.write_text("done")
        written.append(name)
    return written


def _source_families(modalities: Iterable[str]) -> set[str]:
    """Raw families a build reads: metadata, the env values, and each modality's files."""
    families = {"metadata.po", "metadata.pa"} | {f"env.{f}" for f in _ENV_FAMILIES}
    families |= {MODALITIES[m]["family"] for m in modalities if m != "env"}
    if "sentinel2" in modalities:
        families.add("s2.nir")  # the 4-band patches pair the RGB and NIR JPEGs
    return families


def _folder_entry(path: Path, key: str) -> dict[str, Any]:
    """A folder of per-survey files, summarised: count, bytes and sha256 of its listing."""
    files = sorted(p for p in path.rglob("*") if p.is_file())
    listing = hashlib.sha256()  # names and sizes, not contents: cheap on 100k's of files
    for p in files:
        listing.update(f"{p.relative_to(path)}\0{p.stat().st_size}\n".encode())
    return {"path": key, "kind": "folder", "files": len(files),
            "bytes": sum(p.stat().st_size for p in files), "listing_sha256": listing.hexdigest()}


def _source_entries(raw: Any, splits: Sequence[str],
                    modalities: Sequence[str]) -> list[dict[str, Any]]:
    """Each source file with size and sha256; per-survey files summarised per folder/archive."""
    entries: list[dict[str, Any]] = []
    wanted = _source_families(modalities)
    for key in layouts.source_paths(raw.layout, splits, wanted):
        path = Path(raw.root) / key
        if not path.exists():
            continue
        if path.is_dir():
            entries.append(_folder_entry(path, key))
        else:
            entries.append({"path": key, "kind": "file", "bytes": path.stat().st_size,
                            "sha256": sha256_file(path)})
    return entries


# ---------------------------------------------------------------------------------------------
# species, statistics and manifest


def _json_default(value: Any) -> Any:
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    raise TypeError(type(value))


def _species_table(counts: dict[str, pd.Series]) -> pd.DataFrame:
    """speciesId <-> label column index, with record counts per split (sorted by speciesId)."""
    ids: Iterable[Any] = sorted(set().union(*(set(c.index) for c in counts.values())))
    table = pd.DataFrame({"speciesId": np.asarray(list(ids), dtype=np.int32)})
    table.insert(0, "index", np.arange(len(table), dtype=np.int32))
    for split, c in counts.items():
        if len(c):
            table[f"n_{split}"] = c.reindex(table["speciesId"]).fillna(0).astype(
                np.int64).to_numpy()
    return table


def _write_statistics(store: Path) -> None:
    """Training-split statistics, stored once and reused for every split (never test data)."""
    from geoplant.stats import compute_normalization_stats

    compute_normalization_stats(store, "pa_train", write=True)


def _manifest(layout: str, raw_root: str, splits: list[str],
              cube_modalities: dict[str, list[str]], block_surveys: int, counts: dict[str, int],
              skipped: list[dict[str, Any]], raster_names: list[str],
              sources: list[dict[str, Any]], stats_written: bool) -> dict[str, Any]:
    """The store's ``manifest.json`` content (keys in the order they are written)."""
    return {
        "format": "geoplant-store/1",
        "created_by": f"geoplant {__version__}",
        "layout": layout,
        "raw_root": raw_root,
        "splits": splits,
        "modalities": cube_modalities,
        "block_surveys": block_surveys,
        "chunk_surveys": CHUNK_SURVEYS,
        "counts": counts,
        "skipped": {"total": len(skipped), "items": skipped},
        "rasters": raster_names,
        "normalization_stats": "stats.json" if stats_written else None,
        "sources": sources,
        "versions": _versions(),
    }


def _write_manifest(store: Path, manifest: dict[str, Any]) -> None:
    atomic_write_bytes(store / "manifest.json",
                       (json.dumps(manifest, indent=1, default=_json_default) + "\n").encode())


# ---------------------------------------------------------------------------------------------


def build(
    raw_root: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    splits: Sequence[str] | None = None,
    modalities: Sequence[str] | None = None,
    scheduler: str | None = None,
    workers: int | None = None,
    strict: bool = False,
    rasters: bool = True,
    progress: bool = True,
    block_surveys: int = BLOCK_SURVEYS,
) -> BuildSummary:
    """Build a raw release into a store (resumable: rerun after an interruption).

    Parameters
    ----------
    raw_root
        Raw release folder (layout detected: ``glc24`` or ``geoplant``).
    out
        Store folder to create or resume.
    splits
        Splits to build (default: all of the layout's).
    modalities
        Per-survey modalities (default: every one the PA splits have):
        ``sentinel2``, ``sentinel2_tiff``, ``landsat``, ``climate``, ``env``.
    scheduler
        Address of a dask.distributed scheduler; default: dask's local threaded scheduler.
    workers
        Local worker threads (default: all cores).
    strict
        Fail on the first bad item instead of skipping it.
    rasters
        Also convert the environmental rasters to ``rasters.zarr``.
    progress
        Show progress bars.
    block_surveys
        Surveys per block; a multiple of :data:`CHUNK_SURVEYS`.
    """
    from geoplant.raw import RawRelease

    started = time.perf_counter()
    if block_surveys <= 0 or block_surveys % CHUNK_SURVEYS:
        raise GeoplantError(f"block_surveys must be a positive multiple of {CHUNK_SURVEYS}, "
                            f"got {block_surveys}")
    raw = RawRelease(raw_root)
    raw_path = str(Path(raw_root).absolute())
    store = Path(out).expanduser().absolute()
    splits = _check_request(raw, splits, modalities)
    _prepare_store(store, {"raw": raw_path, "splits": splits,
                           "modalities": list(modalities) if modalities else None,
                           "block_surveys": block_surveys})
    skips = _Skips(strict)

    records = _build_records(raw, store, splits, skips, progress)
    # PO records have no per-survey data: cubes are for the PA splits
    cube_modalities = {s: _split_modalities(raw, s, modalities) for s in splits if s != "po_train"}
    tasks, resumed = _plan_cubes(raw, store, cube_modalities, records.survey_ids, skips,
                                 block_surveys)
    phases = {"records": time.perf_counter() - started}  # planning the cubes counts here
    with _timed(phases, "cubes"):
        _run_tasks(tasks, scheduler, workers, "cube blocks", progress)
    _add_block_skips(store, cube_modalities, skips)
    with _timed(phases, "rasters"):
        raster_names = _write_rasters(raw, store / "rasters.zarr", progress, skips) \
            if rasters else []
    with _timed(phases, "sources"):
        sources = _source_entries(raw, splits, list(modalities or MODALITIES))

    species = _species_table(records.species_counts)
    species.to_parquet(store / "species.parquet", index=False)
    counts = {**records.counts, "species": len(species), "rasters": len(raster_names)}
    stats_written = "pa_train" in splits
    manifest = _manifest(raw.layout, raw_path, splits, cube_modalities, block_surveys, counts,
                         skips.items, raster_names, sources, stats_written)
    _write_manifest(store, manifest)
    if stats_written:
        with _timed(phases, "stats"):
            _write_statistics(store)
    shutil.rmtree(store / "_build")  # last: the store is complete
    raw.close()
    return BuildSummary(store, counts, skips.items, len(tasks), resumed,
                        time.perf_counter() - started, {k: round(v, 2) for k, v in phases.items()},
                        manifest)


def configure_parser(parser: Any) -> None:
    """Add the ``build`` command's options."""
    parser.add_argument("raw", help="raw release folder (glc24 or geoplant layout)")
    parser.add_argument("--out", required=True, help="store folder to create or resume")
    parser.add_argument("--splits", nargs="+", help="splits to build (default: all)")
    parser.add_argument("--modalities", nargs="+", choices=tuple(MODALITIES),
                        help="per-survey modalities (default: all the release has)")
    parser.add_argument("--scheduler", help="dask.distributed scheduler address (default: "
                                            "local threads)")
    parser.add_argument("--workers", type=int, help="local worker threads (default: all cores)")
    parser.add_argument("--strict", action="store_true", help="fail on the first bad item")
    parser.add_argument("--no-rasters", action="store_true", help="skip the raster conversion")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: Any) -> int:
    """Run ``geoplant build``."""
    if args.workers is not None and args.workers < 1:
        raise GeoplantError(f"--workers must be >= 1, got {args.workers}")
    if not Path(args.raw).is_dir():
        raise GeoplantError("raw release folder not found", path=args.raw,
                            fix="pass the folder made by `geoplant download` or "
                                "`geoplant sample`")
    summary = build(args.raw, args.out, splits=args.splits, modalities=args.modalities,
                    scheduler=args.scheduler, workers=args.workers, strict=args.strict,
                    rasters=not args.no_rasters, progress=not args.quiet)
    counts = ", ".join(f"{k}={v:,}" for k, v in summary.counts.items())
    print(f"built {summary.store} in {summary.seconds:.1f} s ({summary.blocks_done} blocks, "
          f"{summary.blocks_resumed} resumed): {counts}")
    if summary.skipped:
        kinds = pd.Series([s["kind"] for s in summary.skipped]).value_counts()
        print(f"skipped {len(summary.skipped)} bad items ("
              + ", ".join(f"{k}: {v}" for k, v in kinds.items())
              + "); listed in manifest.json")
    return 0
