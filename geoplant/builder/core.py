"""`build`: check the request and ``--out``, lock the store, then write it phase by phase
(records, cubes, rasters, PO env, sources, species table and manifest, statistics) and mark it
complete. Each phase lives in its own module of :mod:`geoplant.builder`."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from geoplant.builder.cubes import add_block_skips, plan_cubes
from geoplant.builder.lock import store_lock
from geoplant.builder.manifest import (
    make_manifest,
    source_entries,
    write_manifest,
    write_species,
    write_statistics,
)
from geoplant.builder.output import check_out, clear_out, finish, prepare_store
from geoplant.builder.po_env import (
    PoEnvPlan,
    plan_po_env,
    po_cube_modalities,
    po_env_from_tables,
)
from geoplant.builder.rasters import write_rasters
from geoplant.builder.records import Records, build_records
from geoplant.builder.skips import Skips
from geoplant.builder.spec import (
    BLOCK_SURVEYS,
    CHUNK_SURVEYS,
    MODALITIES,
    check_request,
    split_modalities,
)
from geoplant.builder.tasks import run_tasks, settle_zarr_writes
from geoplant.errors import GeoplantError

__all__ = ["BuildSummary", "build"]


@dataclass
class BuildSummary:
    """What :func:`build` did."""

    store: Path
    counts: dict[str, int]
    skipped: list[dict[str, Any]]
    blocks_done: int
    blocks_resumed: int
    seconds: float
    #: Wall time per phase: records, cubes (the per-survey blocks), rasters, po_env (the PO
    #: env sampled from the rasters), sources, stats.
    phase_seconds: dict[str, float] = field(default_factory=dict)
    manifest: dict[str, Any] = field(repr=False, default_factory=dict)


@dataclass(frozen=True)
class _Request:
    """What a build was asked for, checked (the options of :func:`build` but its folders)."""

    splits: list[str]
    modalities: Sequence[str] | None
    scheduler: str | None
    workers: int | None
    rasters: bool
    progress: bool
    block_surveys: int

    def settings(self, raw_path: Path) -> dict[str, Any]:
        """What a resumed build must share with the interrupted one (``_build/settings.json``)."""
        return {"raw": str(raw_path), "splits": self.splits,
                "modalities": list(self.modalities) if self.modalities else None,
                "block_surveys": self.block_surveys}

    @property
    def with_stats(self) -> bool:
        """Whether to write statistics: they are of the training split, so only with it."""
        return "pa_train" in self.splits


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
    _check_block_surveys(block_surveys)
    raw = RawRelease(raw_root)
    raw_path = Path(raw_root).absolute()
    store = Path(out).expanduser().absolute()
    request = _Request(check_request(raw, splits, modalities), modalities, scheduler, workers,
                       rasters, progress, block_surveys)
    check_out(store, raw_path, overwrite)
    try:
        store.mkdir(parents=True, exist_ok=True)
        with store_lock(store):
            if overwrite:
                clear_out(store)
            prepare_store(store, request.settings(raw_path))
            try:
                return _build_locked(raw, store, request, Skips(strict), started)
            except BaseException:
                settle_zarr_writes()  # before the lock goes: no write may outlive it
                raise
    except OSError as err:
        raise _os_error(err, store) from None
    finally:
        raw.close()


def _check_block_surveys(block_surveys: int) -> None:
    """A block is a whole number of image chunks, so that no two blocks share a chunk."""
    if block_surveys <= 0 or block_surveys % CHUNK_SURVEYS:
        raise GeoplantError(f"block_surveys must be a positive multiple of {CHUNK_SURVEYS}, "
                            f"got {block_surveys}")


def _build_locked(raw: Any, store: Path, request: _Request, skips: Skips,
                  started: float) -> BuildSummary:
    """Every phase of :func:`build`, once the store is locked and prepared."""
    records = build_records(raw, store, request.splits, skips, request.progress)
    # A PO cube holds env, from the PO env tables (read here like the PA ones) or sampled from
    # the rasters (the po_env phase), and the PO time-series cubes where the release has them
    po_tables = po_env_from_tables(raw, request.splits, request.modalities)
    po_modalities = po_cube_modalities(raw, request.splits, request.modalities, po_tables)
    cube_modalities = {s: po_modalities if s == "po_train"
                       else split_modalities(raw, s, request.modalities)
                       for s in request.splits if s != "po_train" or po_modalities}
    tasks, resumed = plan_cubes(raw, store, cube_modalities, records.survey_ids, skips,
                                request.block_surveys)
    phases = {"records": time.perf_counter() - started}  # planning the cubes counts here
    with _timed(phases, "cubes"):
        results = run_tasks(tasks, request.scheduler, request.workers, "cube blocks",
                            request.progress)
    add_block_skips(results, list(cube_modalities), skips)
    with _timed(phases, "rasters"):
        raster_names = write_rasters(raw, store / "rasters.zarr", request.progress, skips) \
            if request.rasters else []
    with _timed(phases, "po_env"):
        po_env = _po_env(raw, store, request, records, raster_names, po_tables)
    if po_env.source == "rasters":  # in split order, like the others
        cube_modalities = {s: cube_modalities.get(s, ["env"]) for s in request.splits
                           if s in cube_modalities or s == "po_train"}
    with _timed(phases, "sources"):
        sources = source_entries(raw, request.splits, list(request.modalities or MODALITIES))
    counts, manifest = _describe(raw, store, request, records, cube_modalities, raster_names,
                                 sources, skips, po_env)
    if request.with_stats:
        with _timed(phases, "stats"):
            write_statistics(store)
    finish(store)  # last: the store is complete
    return BuildSummary(store, counts, skips.items, len(tasks) + len(po_env.tasks),
                        resumed + po_env.resumed,
                        time.perf_counter() - started, {k: round(v, 2) for k, v in phases.items()},
                        manifest)


def _po_env(raw: Any, store: Path, request: _Request, records: Records,
            raster_names: list[str], po_tables: bool) -> PoEnvPlan:
    """The PO env phase: sample the rasters at the PO surveys (when the release has no PO
    env tables); what it planned, once its tasks have run."""
    if po_tables:  # read by the cubes phase
        return PoEnvPlan(source="tables")
    plan = plan_po_env(raw, store, request.splits, request.modalities, records.survey_ids,
                       raster_names, request.block_surveys)
    run_tasks(plan.tasks, request.scheduler, request.workers, "po_train env blocks",
              request.progress)
    return plan


def _describe(raw: Any, store: Path, request: _Request, records: Records,
              cube_modalities: dict[str, list[str]], raster_names: list[str],
              sources: list[dict[str, Any]], skips: Skips,
              po_env: PoEnvPlan) -> tuple[dict[str, int], dict[str, Any]]:
    """Write the species table and the manifest; return the store's counts and manifest."""
    species = write_species(store, records.species_counts)
    counts = {**records.counts, "species": len(species), "rasters": len(raster_names)}
    manifest = make_manifest(raw.layout, str(Path(raw.root).absolute()), request.splits,
                             cube_modalities, request.block_surveys, counts, skips.items,
                             raster_names, sources, request.with_stats, po_env.source,
                             po_env.without_raster)
    write_manifest(store, manifest)
    return counts, manifest


@contextlib.contextmanager
def _timed(phases: dict[str, float], name: str) -> Iterator[None]:
    """Record the wall time of the ``with`` body as ``phases[name]``."""
    mark = time.perf_counter()
    yield
    phases[name] = time.perf_counter() - mark


def _os_error(err: OSError, store: Path) -> GeoplantError:
    """An OS error during a build (disk full, permissions) as a one-line error."""
    reason = err.strerror or str(err) or type(err).__name__
    return GeoplantError(f"{reason} while building the store", path=err.filename or store,
                         fix="free some space or make it writable, then rerun the same "
                             "command: the build resumes where it stopped")
