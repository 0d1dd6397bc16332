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
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import os
import platform
import re
import shutil
import socket
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any, Final

import numpy as np
import pandas as pd

from geoplant import __version__, layouts
from geoplant.errors import GeoplantError
from geoplant.files import (
    atomic_write_bytes,
    atomic_write_text,
    atomic_write_with,
    remove_stale_temporaries,
    sha256_file,
)
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
#: The lock file a build holds inside the store.
LOCK_NAME: Final = ".geoplant-build.lock"
#: A lock file still empty after this long was left by a writer killed while creating it.
_EMPTY_LOCK_GRACE_S: Final = 10.0
#: What a finished build renames ``_build`` to before deleting it (the store is complete then).
_DONE_PREFIX: Final = "._build.tmp-"
#: Temporaries of zarr-python's local store (``<name>.<uuid4 hex>.partial``).
_ZARR_PARTIAL: Final = re.compile(r"\.[0-9a-f]{32}\.partial$")
_STRICT_FIX: Final = "repair or re-download the file, or build without --strict to skip bad items"
#: How long a failed build waits for zarr's chunk writes still in flight.
_SETTLE_S: Final = 30.0


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


@functools.cache
def _file_mode() -> int:
    """The mode a plain ``open(path, "w")`` gives a new file (0666 less the umask)."""
    with contextlib.suppress(OSError, ValueError, StopIteration):
        status = Path("/proc/self/status").read_text().splitlines()
        return 0o666 & ~int(next(x for x in status if x.startswith("Umask:")).split()[1], 8)
    umask = os.umask(0o022)  # no /proc: read it the only portable way (set, then restore)
    os.umask(umask)
    return 0o666 & ~umask


def _write_store_file(path: Path, write: Callable[[Path], Any]) -> None:
    """Write a file of the store atomically, readable like a file written in place.

    The temporaries of :mod:`geoplant.files` are created 0600; a shared store should keep
    the permissions its files had when they were written directly.
    """
    def write_readable(tmp: Path) -> None:
        write(tmp)
        os.chmod(tmp, _file_mode())

    atomic_write_with(path, write_readable)


def _strict_error(kind: str, reason: str, *, survey_id: int | None = None,
                  file: str | None = None) -> GeoplantError:
    """The error a bad item raises under ``--strict``."""
    return GeoplantError(f"{kind} of survey {survey_id}: {reason}" if survey_id is not None
                         else f"{kind}: {reason}", path=file, fix=_STRICT_FIX)


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
            raise _strict_error(kind, reason, survey_id=survey_id, file=file)
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


# ---------------------------------------------------------------------------------------------
# the store lock: one writer at a time


def _read_json_dict(path: Path) -> dict[str, Any] | None:
    """A small JSON object file (the lock, the settings), or ``None`` if empty or unreadable."""
    try:
        holder = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return holder if isinstance(holder, dict) else None


def _lock_busy(path: Path, holder: dict[str, Any] | None) -> GeoplantError:
    """The one-line error a second writer gets."""
    if holder is None:
        who, stop = "another build", "stop it"
    else:
        who = f"another build (pid {holder.get('pid')} on {holder.get('host')}, since " \
              f"{holder.get('started')})"
        stop = f"stop it (kill {holder.get('pid')})"
    return GeoplantError(f"{who} is writing this store", path=path.parent,
                         fix=f"wait for it to finish, or {stop} and rerun to resume; if no "
                             f"build is running, delete {path}")


def _flock(fd: int) -> bool | None:
    """Try to lock ``fd`` exclusively without waiting: taken, held elsewhere, or unsupported."""
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError:  # no flock on this file system: the pid check alone decides
        return None
    return True


def _same_file(fd: int, path: Path) -> bool:
    """Whether ``path`` still names the file open as ``fd`` (not released and recreated)."""
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False


def _is_stale(holder: dict[str, Any] | None, path: Path, flocked: bool | None) -> bool:
    """Whether a lock's holder is gone.

    On this host a live holder keeps its file ``flock``-ed, so a free flock means it is gone
    even when its pid was reused (containers restart with the same pids); without flock, a
    dead pid. A lock from another host is never taken over: its pid means nothing here.
    """
    if holder is None:  # a writer killed between creating the file and filling it
        return time.time() - path.stat().st_mtime > _EMPTY_LOCK_GRACE_S
    if holder.get("host") != socket.gethostname():
        return False
    if flocked:
        return True
    pid = holder.get("pid")
    if not isinstance(pid, int):
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _write_holder(fd: int) -> None:
    """Fill the lock file with this process's pid, host and start time."""
    content = json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                          "started": time.strftime("%Y-%m-%d %H:%M:%S %z")}).encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, content, 0)


def _take_over(path: Path) -> int | None:
    """Take a stale lock over: its fd, or ``None`` if it vanished meanwhile (try again)."""
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return None
    try:
        flocked = _flock(fd)
        # flock serialises takeovers: of two builds that find the same stale lock, one wins
        if flocked is False:
            raise _lock_busy(path, _read_json_dict(path))
        if not _same_file(fd, path):
            os.close(fd)
            return None
        holder = _read_json_dict(path)
        if not _is_stale(holder, path, flocked):
            raise _lock_busy(path, holder)
        _write_holder(fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.close(fd)
        raise
    return fd


def _acquire_lock(store: Path) -> int:
    """Create ``STORE/.geoplant-build.lock`` (``O_CREAT | O_EXCL``) or take a stale one over."""
    path = store / LOCK_NAME
    for _attempt in range(5):  # each retry follows a lock released under our feet
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o644)
        except FileExistsError:
            taken = _take_over(path)
            if taken is not None:
                return taken
            continue
        _flock(fd)
        _write_holder(fd)
        return fd
    raise _lock_busy(path, _read_json_dict(path))


def _release_lock(store: Path, fd: int) -> None:
    """Delete the lock file (if it is still ours), then close it (which drops the flock)."""
    path = store / LOCK_NAME
    with contextlib.suppress(OSError):
        if _same_file(fd, path):
            path.unlink()
    os.close(fd)


@contextlib.contextmanager
def _store_lock(store: Path) -> Iterator[None]:
    """Hold the store's build lock for the ``with`` body, released on every way out."""
    fd = _acquire_lock(store)
    try:
        yield
    finally:
        _release_lock(store, fd)


# ---------------------------------------------------------------------------------------------
# the output folder


def _check_out(store: Path, raw_root: Path, overwrite: bool) -> None:
    """Refuse an ``--out`` that is a file, or a non-empty folder that holds no store.

    A store is a folder with ``manifest.json`` (complete) or ``_build/`` (interrupted);
    ``overwrite`` replaces anything but the raw release itself.
    """
    if store.exists() and not store.is_dir():
        raise GeoplantError("exists and is not a folder", path=store, fix="choose another --out")
    if overwrite and (store == raw_root or store in raw_root.parents):
        raise GeoplantError("--overwrite would delete the raw release", path=store,
                            fix="choose an --out outside the release")
    if overwrite or not store.is_dir():
        return
    entries = {p.name for p in store.iterdir()} - {LOCK_NAME}
    if entries and not entries & {"manifest.json", "_build"}:
        raise GeoplantError("folder is not empty and holds no geoplant store", path=store,
                            fix="choose a new or empty --out, or pass --overwrite to replace "
                                "what it holds")


def _clear_out(store: Path) -> None:
    """Delete what ``store`` holds, but the lock this build holds (``--overwrite``)."""
    for entry in store.iterdir():
        if entry.name == LOCK_NAME:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def _remove_leftovers(store: Path) -> None:
    """Remove what killed builds left: their temporaries and zarr's partial chunks.

    Run under the lock, so no other writer owns any of them.
    """
    if not (store / "_build").exists():
        return  # a fresh or complete store: nothing of a killed build to find
    remove_stale_temporaries(store)
    for sub in ("cubes", "rasters.zarr"):
        for partial in (store / sub).rglob("*.partial"):
            if _ZARR_PARTIAL.search(partial.name):
                partial.unlink(missing_ok=True)


def _prepare_store(store: Path, settings: dict[str, Any]) -> None:
    """Create the store's folders, or resume an interrupted build made with the same settings.

    A complete store (a manifest and no ``_build/``) is never overwritten.
    """
    for trash in store.glob(f"{_DONE_PREFIX}*"):  # a finished build killed while tidying up
        shutil.rmtree(trash, ignore_errors=True)
    if (store / "manifest.json").exists() and not (store / "_build").exists():
        raise GeoplantError("a complete store already exists here", path=store,
                            fix="choose another --out, or pass --overwrite to rebuild it")
    _remove_leftovers(store)
    for sub in ("_build", "records", "cubes"):  # _build first: it marks the folder a store
        (store / sub).mkdir(parents=True, exist_ok=True)
    settings_file = store / "_build" / "settings.json"
    saved = _read_json_dict(settings_file) if settings_file.exists() else None
    if saved is not None and saved != settings:
        raise GeoplantError("an interrupted build with other settings is here", path=store,
                            fix=f"rerun it with the same options ({json.dumps(saved)}), or "
                                "pass --overwrite to start again")
    atomic_write_text(settings_file, json.dumps(settings))


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


def _stream_records(raw: Any, split: str, tmp: Path, skips: _Skips, progress: bool,
                    problems: list[Any]) -> tuple[list[np.ndarray], pd.Series]:
    """Write a split's metadata to the GeoParquet file ``tmp``, chunk by chunk."""
    import pyarrow.parquet as pq
    from tqdm.auto import tqdm

    family = "metadata.po" if split == "po_train" else "metadata.pa"
    file = raw.describe(raw.location(family, split))
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
    return ids, species_counts


def _write_records(raw: Any, split: str, target: Path, skips: _Skips,
                   progress: bool) -> tuple[np.ndarray, pd.Series]:
    """Stream a split's metadata into GeoParquet; return its surveyIds and species counts."""
    from geoplant.raw import RowProblem

    problems: list[RowProblem] = []
    streamed: list[tuple[list[np.ndarray], pd.Series]] = []
    _write_store_file(target, lambda tmp: streamed.append(
        _stream_records(raw, split, tmp, skips, progress, problems)))
    ids, species_counts = streamed[0]
    for p in problems:
        skips.add(split, "record", p.problem, survey_id=p.survey_id, file=p.file, line=p.line)
    survey_ids = np.unique(np.concatenate(ids)) if ids else np.empty(0, np.int64)
    return survey_ids, species_counts.astype(np.int64)


def _save_npy(path: Path, array: np.ndarray) -> None:
    # through a handle: np.save adds ".npy" to a temporary's name
    with open(path, "wb") as handle:
        np.save(handle, array)


def _split_records(raw: Any, store: Path, split: str, skips: _Skips,
                   progress: bool) -> tuple[np.ndarray, pd.Series]:
    """Write a split's records, or reload what an earlier run of this build finished.

    A split with skipped rows is not marked finished: a rerun reads it again, so a repaired
    table is picked up instead of an old verdict.
    """
    target = store / "records" / f"{split}.parquet"
    marker = store / "_build" / f"records-{split}.json"
    ids_file = marker.with_suffix(".npy")
    if marker.exists():  # resume: the records were finished before
        saved = json.loads(marker.read_text())
        species_counts = pd.Series(saved["species_counts"], dtype=np.int64)
        species_counts.index = species_counts.index.astype(np.int64)
        return np.load(ids_file), species_counts
    before = len(skips.items)
    ids, species_counts = _write_records(raw, split, target, skips, progress)
    if len(skips.items) == before:
        atomic_write_with(ids_file, lambda tmp: _save_npy(tmp, ids))
        atomic_write_bytes(marker, json.dumps({
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
                marker: str, strict: bool = False) -> dict[str, Any]:
    """Read one block of surveys' raw files and write them to their region of the Zarr store.

    Under ``strict`` the first bad item raises. A block with a skipped item (or a survey
    without env values) is not marked done, so a rerun reads it again.
    """
    import zarr

    group = zarr.open_group(cube_path, mode="r+")
    stop = start + len(survey_ids)
    skipped: list[dict[str, Any]] = []
    complete = True
    readers: dict[str, Callable[..., Any]] = {
        "sentinel2": raw.read_s2_jpegs, "sentinel2_tiff": raw.read_s2_tiffs,
        "landsat": raw.read_landsat_cubes, "climate": raw.read_climate_cubes,
    }
    for name in modalities:
        if name == "env":
            assert env_values is not None
            valid = ~np.isnan(env_values).all(axis=1)
            cube_array(group, "env")[start:stop] = env_values
            cube_array(group, "valid_env")[start:stop] = valid
            complete &= bool(valid.all())
            continue
        try:
            batch = readers[name](split, survey_ids, on_error="raise" if strict else "skip")
        except GeoplantError as bad:  # strict: stop at the first bad item
            raise _strict_error(name, bad.problem, file=bad.path) from None
        cube_array(group, name)[start:stop] = batch.data
        cube_array(group, f"valid_{name}")[start:stop] = batch.ok
        for sid, err in sorted(batch.errors.items()):
            skipped.append({"split": split, "kind": name, "surveyId": int(sid),
                            "file": err.path, "line": None, "reason": err.problem})
    result = {"split": split, "start": start, "n": len(survey_ids), "skipped": skipped}
    if complete and not skipped:
        atomic_write_bytes(marker, json.dumps(result).encode())
    return result


def _template_key(survey_ids: np.ndarray, modalities: Sequence[str], env_columns: list[str],
                  block_surveys: int) -> str:
    """A digest of what a cube template is made from (its surveys, arrays and blocks)."""
    digest = hashlib.sha256(np.ascontiguousarray(survey_ids, dtype=np.int64).tobytes())
    digest.update(json.dumps([list(modalities), env_columns, block_surveys]).encode())
    return digest.hexdigest()


def _ensure_template(store: Path, split: str, survey_ids: np.ndarray,
                     modalities: Sequence[str], env_columns: list[str],
                     block_surveys: int) -> Path:
    """Write a split's empty cube unless a complete one for the same surveys is there.

    The template is marked complete (``_build/cube-<split>.json``) only after it is fully
    written, so a build killed while writing it rewrites it on the next run; so does one whose
    records changed (a repaired table), and then every block of the split is redone.
    """
    cube_path = store / "cubes" / f"{split}.zarr"
    marker = store / "_build" / f"cube-{split}.json"
    key = _template_key(survey_ids, modalities, env_columns, block_surveys)
    done = _read_json_dict(marker) if marker.exists() else None
    if done is not None and done.get("template") == key and (cube_path / "zarr.json").exists():
        return cube_path
    shutil.rmtree(cube_path, ignore_errors=True)
    shutil.rmtree(store / "_build" / split, ignore_errors=True)  # blocks of an older template
    ds, encoding = _template(split, survey_ids, modalities, env_columns, block_surveys)
    ds.to_zarr(str(cube_path), mode="w", compute=False, zarr_format=3,
               encoding=encoding, consolidated=False)
    atomic_write_text(marker, json.dumps({"template": key}))
    return cube_path


def _plan_cube_blocks(raw: Any, store: Path, split: str, modalities: Sequence[str],
                      survey_ids: np.ndarray, skips: _Skips,
                      block_surveys: int) -> tuple[list[Any], int]:
    """Create a split's cube (empty) unless it exists; one delayed task per unfinished block.

    Returns the tasks and the number of blocks an earlier run already finished.
    """
    import dask

    env_values: np.ndarray | None = None
    env_columns: list[str] = []
    if "env" in modalities:
        env_values, env_columns = _env_table(raw, split, survey_ids, skips)
    cube_path = _ensure_template(store, split, survey_ids, modalities, env_columns,
                                 block_surveys)
    done_dir = store / "_build" / split
    done_dir.mkdir(exist_ok=True)
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
            raw, str(cube_path), split, start, block_ids, modalities, block_env, str(marker),
            skips.strict))
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


def _add_block_skips(results: list[dict[str, Any]], splits: Sequence[str],
                     skips: _Skips) -> None:
    """Count the skipped items of the blocks read now, in split and block order.

    Blocks resumed from an earlier run had none: a block with skips is never marked done.
    """
    order = {split: i for i, split in enumerate(splits)}
    for result in sorted(results, key=lambda r: (order[r["split"]], r["start"])):
        for item in result["skipped"]:
            skips.add(**{k: item[k] for k in ("split", "kind", "reason")},
                      survey_id=item["surveyId"], file=item["file"], line=item["line"])


def _run_distributed(tasks: list[Any], scheduler: str, desc: str,
                     progress: bool) -> list[dict[str, Any]]:
    """Compute tasks on a dask.distributed cluster; the first failure cancels the rest."""
    from distributed import Client, as_completed
    from tqdm.auto import tqdm

    with Client(scheduler) as client:
        futures = client.compute(tasks)
        results = []
        try:
            for future in tqdm(as_completed(futures), total=len(futures), desc=desc,
                               disable=not progress):
                results.append(future.result())
        except BaseException:
            client.cancel(futures)
            raise
        return results


def _compute_and_wait(tasks: Sequence[Any], workers: int | None) -> list[Any]:
    """Compute dask objects on local threads; return only once no task runs any more.

    On a failure dask raises at once while the other running tasks go on writing; waiting for
    them keeps writes from outliving the build (and its lock) or racing a clean-up.
    """
    import dask
    import dask.threaded

    # dask's own pool class where it has one (it hands contextvars to the workers)
    pool_type = getattr(dask.threaded, "ContextAwareThreadPoolExecutor", ThreadPoolExecutor)
    pool = pool_type(workers or os.cpu_count())
    try:
        return list(dask.compute(*tasks, scheduler="threads", pool=pool))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _run_tasks(tasks: list[Any], scheduler: str | None, workers: int | None, desc: str,
               progress: bool) -> list[dict[str, Any]]:
    """Compute dask delayed tasks with a progress bar, locally or on a distributed cluster.

    Locally, the first failure stops the run: dask submits no more tasks, and the blocks
    already running are waited for, so nothing writes the store once this returns.
    """
    from dask.callbacks import Callback
    from tqdm.auto import tqdm

    if not tasks:
        return []
    if scheduler:
        return _run_distributed(tasks, scheduler, desc, progress)
    bar = tqdm(total=len(tasks), desc=desc, disable=not progress)
    keys = {t.key for t in tasks}

    class _Bar(Callback):
        def _posttask(self, key: Any, result: Any, dsk: Any, state: Any, id: Any) -> None:
            if key in keys:
                bar.update(1)

    try:
        with _Bar():
            return _compute_and_wait(tasks, workers)
    finally:
        bar.close()


# ---------------------------------------------------------------------------------------------
# rasters and sources


def _write_raster(raw: Any, target: Path, name: str, skips: _Skips) -> bool:
    """Copy one raster into ``rasters.zarr/<name>``; a damaged one is skipped (or fatal).

    Opening is lazy: the pixels are read while copying, so the copy is what validates them.
    """
    import xarray as xr

    try:
        array = raw.raster(name, chunks={"x": 512, "y": 512})
    except GeoplantError as err:
        skips.add("rasters", "raster", err.problem, file=err.path)
        return False
    ds = xr.Dataset({name: array.rename(None)})
    ds[name].encoding = {}
    ds = ds.chunk({"x": 512, "y": 512})
    try:
        _compute_and_wait([ds.to_zarr(str(target), group=name, mode="w", zarr_format=3,
                                      consolidated=False, compute=False)], None)
    except Exception as exc:
        damaged = raw.raster_read_error(name, exc)
        if damaged is None:  # not the raster's fault (e.g. a full disk): let it through
            raise
        shutil.rmtree(target / name, ignore_errors=True)  # what was copied before the damage
        skips.add("rasters", "raster", damaged.problem, file=damaged.path)
        return False
    return True


def _write_rasters(raw: Any, target: Path, progress: bool, skips: _Skips) -> list[str]:
    """Copy every raster (resumable per raster); the names written, in layout order.

    A skipped raster gets no marker, so a rerun tries it again.
    """
    from tqdm.auto import tqdm

    done_dir = target.parent / "_build" / "rasters"
    done_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name in tqdm(raw.raster_names(), desc="rasters", disable=not progress):
        marker = done_dir / f"{name}.done"
        if not marker.exists():
            if not _write_raster(raw, target, name, skips):
                continue
            atomic_write_text(marker, "done")
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
    text = json.dumps(manifest, indent=1, default=_json_default) + "\n"
    _write_store_file(store / "manifest.json", lambda tmp: tmp.write_text(text))


# ---------------------------------------------------------------------------------------------


def _os_error(err: OSError, store: Path) -> GeoplantError:
    """An OS error during a build (disk full, permissions) as a one-line error."""
    reason = err.strerror or str(err) or type(err).__name__
    return GeoplantError(f"{reason} while building the store", path=err.filename or store,
                         fix="free some space or make it writable, then rerun the same "
                             "command: the build resumes where it stopped")


async def _pending_writes_done() -> None:
    me = asyncio.current_task()
    pending = [t for t in asyncio.all_tasks() if t is not me]
    if pending:
        await asyncio.wait(pending, timeout=_SETTLE_S)


def _settle_zarr_writes() -> None:
    """Wait for the chunk writes zarr still has in flight after one of them failed.

    zarr writes a region's chunks concurrently on its own event loop; when one fails (a full
    disk) the others run on. Waiting for them means nothing writes the store once the lock is
    released, and asyncio prints no "Task was destroyed but it is pending!" at exit.
    """
    with contextlib.suppress(Exception):  # zarr.core.sync is internal: best effort
        from zarr.core.sync import sync

        sync(_pending_writes_done())


def _finish(store: Path) -> None:
    """Mark the store complete: ``_build`` renamed away in one step, then deleted."""
    trash = store / f"{_DONE_PREFIX}{os.getpid()}"
    os.replace(store / "_build", trash)
    shutil.rmtree(trash)


def _build_locked(raw: Any, store: Path, splits: list[str], modalities: Sequence[str] | None,
                  scheduler: str | None, workers: int | None, skips: _Skips, rasters: bool,
                  progress: bool, block_surveys: int,
                  started: float) -> BuildSummary:
    """Every phase of :func:`build`, once the store is locked and prepared."""
    raw_path = str(Path(raw.root).absolute())
    records = _build_records(raw, store, splits, skips, progress)
    # PO records have no per-survey data: cubes are for the PA splits
    cube_modalities = {s: _split_modalities(raw, s, modalities) for s in splits if s != "po_train"}
    tasks, resumed = _plan_cubes(raw, store, cube_modalities, records.survey_ids, skips,
                                 block_surveys)
    phases = {"records": time.perf_counter() - started}  # planning the cubes counts here
    with _timed(phases, "cubes"):
        results = _run_tasks(tasks, scheduler, workers, "cube blocks", progress)
    _add_block_skips(results, list(cube_modalities), skips)
    with _timed(phases, "rasters"):
        raster_names = _write_rasters(raw, store / "rasters.zarr", progress, skips) \
            if rasters else []
    with _timed(phases, "sources"):
        sources = _source_entries(raw, splits, list(modalities or MODALITIES))

    species = _species_table(records.species_counts)
    _write_store_file(store / "species.parquet", lambda tmp: species.to_parquet(tmp, index=False))
    counts = {**records.counts, "species": len(species), "rasters": len(raster_names)}
    stats_written = "pa_train" in splits
    manifest = _manifest(raw.layout, raw_path, splits, cube_modalities, block_surveys, counts,
                         skips.items, raster_names, sources, stats_written)
    _write_manifest(store, manifest)
    if stats_written:
        with _timed(phases, "stats"):
            _write_statistics(store)
    _finish(store)  # last: the store is complete
    return BuildSummary(store, counts, skips.items, len(tasks), resumed,
                        time.perf_counter() - started, {k: round(v, 2) for k, v in phases.items()},
                        manifest)


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
    overwrite: bool = False,
) -> BuildSummary:
    """Build a raw release into a store (resumable: rerun after an interruption).

    Parameters
    ----------
    raw_root
        Raw release folder (layout detected: ``glc24`` or ``geoplant``).
    out
        Store folder to create or resume. A non-empty folder that holds no store is refused
        (unless ``overwrite``), and so is a complete store.
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
    overwrite
        Delete what ``out`` holds (a store, complete or not, or any other files) and build
        from scratch.

    Raises
    ------
    GeoplantError
        On bad input, on a store another build is writing (``STORE/.geoplant-build.lock``),
        and on any OS error (disk full, permissions): one line naming the path; a rerun of
        the same build resumes where it stopped.
    """
    from geoplant.raw import RawRelease

    started = time.perf_counter()
    if block_surveys <= 0 or block_surveys % CHUNK_SURVEYS:
        raise GeoplantError(f"block_surveys must be a positive multiple of {CHUNK_SURVEYS}, "
                            f"got {block_surveys}")
    raw = RawRelease(raw_root)
    raw_path = Path(raw_root).absolute()
    store = Path(out).expanduser().absolute()
    splits = _check_request(raw, splits, modalities)
    _check_out(store, raw_path, overwrite)
    settings = {"raw": str(raw_path), "splits": splits,
                "modalities": list(modalities) if modalities else None,
                "block_surveys": block_surveys}
    try:
        store.mkdir(parents=True, exist_ok=True)
        with _store_lock(store):
            if overwrite:
                _clear_out(store)
            _prepare_store(store, settings)
            try:
                return _build_locked(raw, store, splits, modalities, scheduler, workers,
                                     _Skips(strict), rasters, progress, block_surveys, started)
            except BaseException:
                _settle_zarr_writes()  # before the lock goes: no write may outlive it
                raise
    except OSError as err:
        raise _os_error(err, store) from None
    finally:
        raw.close()


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
    parser.add_argument("--overwrite", action="store_true",
                        help="delete what --out holds (a store or other files) and build anew")


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
                    rasters=not args.no_rasters, progress=not args.quiet,
                    overwrite=args.overwrite)
    counts = ", ".join(f"{k}={v:,}" for k, v in summary.counts.items())
    print(f"built {summary.store} in {summary.seconds:.1f} s ({summary.blocks_done} blocks, "
          f"{summary.blocks_resumed} resumed): {counts}")
    if summary.skipped:
        kinds = pd.Series([s["kind"] for s in summary.skipped]).value_counts()
        print(f"skipped {len(summary.skipped)} bad items ("
              + ", ".join(f"{k}: {v}" for k, v in kinds.items())
              + "); listed in manifest.json")
    return 0
