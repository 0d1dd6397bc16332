"""``RawRelease``: one raw GeoPlant release on disk (``glc24`` or ``geoplant`` layout).

Every path comes from :mod:`geoplant.layouts`; this module only opens files (plain files or
members of zip archives, whose handles are cached and reused) and calls the per-file readers
of :mod:`geoplant.raw.cubes`, :mod:`geoplant.raw.patches` and :mod:`geoplant.raw.tables`.
"""

from __future__ import annotations

import os
import re
import threading
import zipfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Literal, TypeVar

import numpy as np
import pandas as pd

from geoplant import layouts
from geoplant.errors import GeoplantError
from geoplant.layouts import LANDSAT_BANDS, LayoutName, Location
from geoplant.raw.cubes import read_pt_cube
from geoplant.raw.patches import JPEG_SHAPE, TIFF_SHAPE, read_patch_jpeg, read_patch_tiff
from geoplant.raw.tables import (
    CLIMATE_VALUE_COLUMNS,
    LANDSAT_VALUE_COLUMNS,
    BadRows,
    MetadataKind,
    RowProblem,
    climate_cube_from_values,
    env_columns,
    iter_metadata_csv,
    landsat_cube_from_values,
    read_metadata_csv,
    read_survey_ids_csv,
    read_values_csv,
)

__all__ = ["CLIMATE_SHAPE", "LANDSAT_SHAPE", "Batch", "ConsistencyReport", "FileConsistency",
           "RawRelease", "detect_layout"]

CLIMATE_SHAPE: tuple[int, int, int] = (4, 19, 12)
LANDSAT_SHAPE: tuple[int, int, int] = (6, 4, 21)
OnError = Literal["raise", "skip"]
T = TypeVar("T")

#: Files whose presence identifies a layout (any one is enough).
_SIGNATURES: dict[LayoutName, tuple[str, ...]] = {
    "glc24": ("GLC24_PA_metadata_train.csv", "GLC24_PA_metadata_test.csv",
              "GLC24_P0_metadata_train.csv"),
    "geoplant": ("GeoPlantData",),
}


def detect_layout(root: str | os.PathLike[str]) -> LayoutName:
    """Tell which layout a release root holds, from the files present.

    Raises
    ------
    GeoplantError
        If the root does not exist or holds neither layout (or both).
    """
    path = Path(root)
    if not path.is_dir():
        raise GeoplantError("release root is not a folder", path=path,
                            fix="pass the folder the data was downloaded/extracted to")
    found = [name for name, sigs in _SIGNATURES.items()
             if any((path / s).exists() for s in sigs)]
    if len(found) == 1:
        return found[0]
    if found:
        raise GeoplantError(f"root holds files of several layouts ({', '.join(found)})",
                            path=path, fix="pass layout= explicitly")
    hint = ""
    if (path / "PresenceAbsenceSurveys").is_dir() and path.name == "GeoPlantData":
        hint = "; this looks like the GeoPlantData folder itself: pass its parent"
    raise GeoplantError(
        "no GeoPlant release found (looked for GLC24_PA_metadata_train.csv, "
        f"GLC24_PA_metadata_test.csv, GLC24_P0_metadata_train.csv or GeoPlantData/){hint}",
        path=path, fix="pass the root of an extracted glc24 (Kaggle) or geoplant release",
    )


@dataclass
class Batch:
    """Per-survey arrays read for many surveys at once.

    Attributes
    ----------
    survey_ids
        int64 (n,), in the order asked for.
    data
        (n, ...) array; rows that failed hold the fill value (NaN for floats, 0 for ints).
    ok
        bool (n,): which rows were read.
    errors
        surveyId -> the GeoplantError of each failed row (empty when ``on_error="raise"``).
    """

    survey_ids: np.ndarray
    data: np.ndarray
    ok: np.ndarray
    errors: dict[int, GeoplantError] = field(default_factory=dict)


@dataclass(frozen=True)
class FileConsistency:
    """surveyIds of one predictor file (or per-survey file family) against the metadata."""

    family: str
    file: str
    n_found: int
    missing: np.ndarray
    extra: np.ndarray
    problem: str | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None and self.missing.size == 0 and self.extra.size == 0


@dataclass(frozen=True)
class ConsistencyReport:
    """Result of :meth:`RawRelease.check_consistency`."""

    split: str
    n_surveys: int
    files: tuple[FileConsistency, ...]

    @property
    def ok(self) -> bool:
        return all(f.ok for f in self.files)

    def summary(self) -> str:
        """One line per file that is not consistent ("" when all are)."""
        lines = []
        for f in self.files:
            if f.ok:
                continue
            what = f.problem or (
                f"{f.missing.size} surveyId(s) missing (e.g. {f.missing[:3].tolist()}), "
                f"{f.extra.size} extra (e.g. {f.extra[:3].tolist()})"
            )
            lines.append(f"{f.file}: {what}")
        return "\n".join(lines)

    def raise_if_bad(self) -> None:
        """Raise one GeoplantError listing every inconsistent file."""
        if not self.ok:
            bad = [f for f in self.files if not f.ok]
            raise GeoplantError(
                f"split {self.split}: {len(bad)} file(s) disagree with the metadata's "
                f"{self.n_surveys} surveyIds: " + " | ".join(self.summary().splitlines()),
                path=bad[0].file,
                fix="re-download the incomplete parts, or build with skipping enabled",
            )


class RawRelease:
    """A raw GeoPlant / GeoLifeCLEF release on disk.

    Parameters
    ----------
    root
        Folder of the extracted release (local path).
    layout
        ``"glc24"`` or ``"geoplant"``; detected from the files present when omitted.

    Notes
    -----
    Zip archives are opened once and kept open; call :meth:`close` (or use ``with``) to free
    them. Instances pickle without their handles, so they can be shipped to dask workers.
    """

    def __init__(self, root: str | os.PathLike[str], layout: str | None = None) -> None:
        self.root = Path(root)
        if layout is None:
            self.layout: LayoutName = detect_layout(self.root)
        else:
            self.layout = layouts.check_layout(layout)
            if not self.root.is_dir():
                raise GeoplantError("release root is not a folder", path=self.root,
                                    fix="pass the folder the data was extracted to")
        self._zips: dict[str, zipfile.ZipFile] = {}
        self._lock = threading.Lock()

    # -- plumbing ---------------------------------------------------------------------------

    def __repr__(self) -> str:
        return f"RawRelease({str(self.root)!r}, layout={self.layout!r})"

    def __getstate__(self) -> dict[str, Any]:
        return {"root": self.root, "layout": self.layout}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.root, self.layout = state["root"], state["layout"]
        self._zips, self._lock = {}, threading.Lock()

    def __enter__(self) -> RawRelease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close every cached zip handle."""
        with self._lock:
            for zf in self._zips.values():
                zf.close()
            self._zips.clear()

    @property
    def splits(self) -> tuple[str, ...]:
        """Splits of this release's layout."""
        return layouts.SPLITS[self.layout]

    def families(self, split: str) -> tuple[str, ...]:
        """File families of a split (see :func:`geoplant.layouts.families`)."""
        return layouts.families(self.layout, self._split(split))

    def _split(self, split: str) -> str:
        if split not in self.splits:
            raise GeoplantError(f"unknown split {split!r} for layout {self.layout}",
                                fix=f"use one of: {', '.join(self.splits)}")
        return split

    def location(self, family: str, split: str | None = None, **kw: Any) -> Location:
        """Where a file family lives (relative to the root), see :func:`layouts.location`."""
        try:
            return layouts.location(self.layout, family, split, **kw)
        except KeyError:
            raise GeoplantError(
                f"split {split!r} of layout {self.layout} has no {family!r} files",
                fix=f"families of this split: {', '.join(self.families(split or ''))}"
                if split in self.splits else None,
            ) from None

    def describe(self, loc: Location) -> str:
        """Full name of a location for messages: ``<root>/<path>[::member]``."""
        full = str(self.root / loc.path)
        return full if loc.member is None else f"{full}::{loc.member}"

    def _zip(self, archive: str) -> zipfile.ZipFile:
        zf = self._zips.get(archive)
        if zf is not None:
            return zf
        with self._lock:
            zf = self._zips.get(archive)
            if zf is None:
                path = self.root / archive
                try:
                    zf = zipfile.ZipFile(path)
                except FileNotFoundError:
                    raise GeoplantError("missing archive", path=path,
                                        fix="download this part of the release") from None
                except (zipfile.BadZipFile, OSError) as exc:
                    raise GeoplantError(f"corrupt zip archive ({exc})", path=path,
                                        fix="re-download the archive") from exc
                self._zips[archive] = zf
        return zf

    def _full(self, path: str) -> str:
        # Plain string joins: pathlib costs ~0.1 ms per call, paid 2x per survey in builds.
        return f"{os.fspath(self.root)}/{path}"

    def exists(self, loc: Location) -> bool:
        """Whether a location exists (a missing archive counts as missing)."""
        if loc.member is None:
            return os.path.isfile(self._full(loc.path))
        if not (self.root / loc.path).is_file():
            return False
        try:
            self._zip(loc.path).getinfo(loc.member)
        except KeyError:
            return False
        return True

    def _missing(self, loc: Location) -> GeoplantError:
        return GeoplantError("missing file", path=self.describe(loc),
                             fix="check the release is complete (re-download or re-extract it)")

    def open(self, loc: Location) -> BinaryIO:
        """Open a location as a binary stream (zip members are decompressed on the fly)."""
        if loc.member is None:
            try:
                return open(self._full(loc.path), "rb")  # the caller closes it
            except FileNotFoundError:
                raise self._missing(loc) from None
        try:
            return self._zip(loc.path).open(loc.member)  # type: ignore[return-value]
        except KeyError:
            raise self._missing(loc) from None

    def read_bytes(self, loc: Location) -> bytes:
        """Whole content of a (small) location."""
        with self.open(loc) as fh:
            try:
                return fh.read()
            except (zipfile.BadZipFile, OSError, EOFError) as exc:
                raise GeoplantError(f"cannot read ({exc})", path=self.describe(loc),
                                    fix="re-download the archive") from exc

    def _opener(self, loc: Location) -> Callable[[], BinaryIO]:
        if loc.member is None and not (self.root / loc.path).is_file():
            raise self._missing(loc)
        if loc.member is not None and not self.exists(loc):
            raise self._missing(loc)
        return lambda: self.open(loc)

    # -- tables -----------------------------------------------------------------------------

    def _metadata_kind(self, split: str) -> tuple[str, MetadataKind]:
        split = self._split(split)
        if split == "po_train":
            return "metadata.po", "po"
        return "metadata.pa", "pa" if split == "pa_train" else "pa_test"

    def read_metadata(
        self, split: str, *, bad_rows: BadRows = "raise",
        problems: list[RowProblem] | None = None,
    ) -> pd.DataFrame:
        """Metadata table of a split; see :func:`geoplant.raw.read_metadata_csv`."""
        family, kind = self._metadata_kind(split)
        loc = self.location(family, split)
        return read_metadata_csv(self._opener(loc), kind, bad_rows=bad_rows, problems=problems,
                                 name=self.describe(loc))

    def iter_metadata(
        self, split: str, *, block_bytes: int = 64 << 20, bad_rows: BadRows = "raise",
        problems: list[RowProblem] | None = None,
    ) -> Iterator[pd.DataFrame]:
        """Stream the metadata of a split block by block (flat memory; use for PO)."""
        family, kind = self._metadata_kind(split)
        loc = self.location(family, split)
        return iter_metadata_csv(self._opener(loc), kind, block_bytes=block_bytes,
                                 bad_rows=bad_rows, problems=problems, name=self.describe(loc))

    def survey_ids(self, split: str) -> np.ndarray:
        """Sorted unique surveyIds (int64) of a split's metadata."""
        family, _ = self._metadata_kind(split)
        loc = self.location(family, split)
        return np.unique(read_survey_ids_csv(self._opener(loc), name=self.describe(loc)))

    def read_env(
        self, family: str, split: str, *, bad_rows: BadRows = "raise",
        problems: list[RowProblem] | None = None,
    ) -> pd.DataFrame:
        """One pre-extracted environmental table: ``surveyId`` + its value columns (float32).

        ``family`` is one of ``bioclimatic``, ``elevation``, ``human_footprint``,
        ``landcover``, ``soilgrids`` (``env.`` prefix optional). ±inf are valid only in
        ``human_footprint``.
        """
        key = family.removeprefix("env.")
        cols = env_columns(key)
        loc = self.location(f"env.{key}", self._split(split))
        return read_values_csv(self._opener(loc), cols, allow_inf=key == "human_footprint",
                               bad_rows=bad_rows, problems=problems, name=self.describe(loc))

    def read_climate_values(
        self, split: str, *, bad_rows: BadRows = "raise",
        problems: list[RowProblem] | None = None,
    ) -> pd.DataFrame:
        """Monthly climate table: ``surveyId`` + 912 ``Bio-<var>_<MM>_<YYYY>`` (float32),
        columns in cube order. Precipitation cannot be negative."""
        loc = self.location("climate.values", self._split(split))
        pr = [c for c in CLIMATE_VALUE_COLUMNS if c.startswith("Bio-pr_")]
        return read_values_csv(self._opener(loc), CLIMATE_VALUE_COLUMNS, nonnegative=pr,
                               bad_rows=bad_rows, problems=problems, name=self.describe(loc))

    def climate_values_cube(
        self, split: str, *, bad_rows: BadRows = "raise",
        problems: list[RowProblem] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(surveyIds, float32 (n, 4, 19, 12))`` from the monthly climate CSV."""
        df = self.read_climate_values(split, bad_rows=bad_rows, problems=problems)
        return df["surveyId"].to_numpy(), climate_cube_from_values(df)

    def read_landsat_values(
        self, split: str, band: str, *, bad_rows: BadRows = "raise",
        problems: list[RowProblem] | None = None,
    ) -> pd.DataFrame:
        """One Landsat band table: ``surveyId`` + 84 ``YYYY_Q`` columns (float32, NaN allowed,
        negatives are row problems), columns in cube order (quarter, year)."""
        if band not in LANDSAT_BANDS:
            raise GeoplantError(f"unknown Landsat band {band!r}",
                                fix=f"use one of: {', '.join(LANDSAT_BANDS)}")
        loc = self.location("landsat.values", self._split(split), band=band)
        return read_values_csv(self._opener(loc), LANDSAT_VALUE_COLUMNS,
                               nonnegative=LANDSAT_VALUE_COLUMNS, bad_rows=bad_rows,
                               problems=problems, name=self.describe(loc))

    def landsat_values_cube(
        self, split: str, *, bad_rows: BadRows = "raise",
        problems: list[RowProblem] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(surveyIds, float32 (n, 6, 4, 21))`` from the six band CSVs.

        The six tables must hold the same surveyIds (any order); a table with missing or
        extra ids raises a GeoplantError naming it (with ``bad_rows`` not ``"raise"``, the
        ids absent from any band are dropped and reported instead).
        """
        frames = {b: self.read_landsat_values(split, b, bad_rows=bad_rows, problems=problems)
                  for b in LANDSAT_BANDS}
        ids = frames[LANDSAT_BANDS[0]]["surveyId"].to_numpy()
        common = ids
        for band, frame in frames.items():
            other = frame["surveyId"].to_numpy()
            if len(other) == len(ids) and np.array_equal(np.sort(other), np.sort(ids)):
                continue
            name = self.describe(self.location("landsat.values", split, band=band))
            diff = np.setxor1d(other, ids)
            if bad_rows == "raise":
                raise GeoplantError(
                    f"surveyIds differ from the {LANDSAT_BANDS[0]} band table "
                    f"({diff.size} id(s), e.g. {diff[:3].tolist()})", path=name,
                    fix="re-download the Landsat CSVs; all six must cover the same surveys",
                )
            if problems is not None:
                problems.extend(RowProblem(name, 0, int(s), "surveyId",
                                           "surveyId not in every Landsat band table")
                                for s in diff[:10_000])
            common = np.intersect1d(common, other)
        aligned = {}
        for band, frame in frames.items():
            indexed = frame.set_index("surveyId")
            aligned[band] = indexed.loc[common].reset_index() if common is not ids or not \
                np.array_equal(frame["surveyId"].to_numpy(), ids) else frame
        return np.asarray(common, dtype=np.int64), landsat_cube_from_values(aligned)

    # -- per-survey files -------------------------------------------------------------------

    def _patch_candidates(self, family: str, split: str, sid: int) -> list[Location]:
        loc = self.location(family, self._split(split), survey_id=sid)
        text = str(sid)
        if len(text) >= 4:
            return [loc]
        # ids of < 4 digits: layouts slices ('642' -> 42/6); also accept zero padding (42/06).
        cd, ab = layouts.patch_folders(sid)
        padded = f"{sid % 100:02d}/{sid // 100 % 100:02d}/{sid}."
        old = f"{cd}/{ab}/{sid}."

        def swap(s: str | None) -> str | None:
            if s is None or old not in s:
                return s
            head, _, tail = s.rpartition(old)
            return head + padded + tail

        alt = Location(swap(loc.path) or loc.path, swap(loc.member))
        return [loc, alt] if alt != loc else [loc]

    def _find(self, family: str, split: str, sid: int) -> Location:
        """The existing location of a per-survey file (error naming the expected path)."""
        if family.startswith("s2."):
            cands = self._patch_candidates(family, split, sid)
        else:
            cands = [self.location(family, self._split(split), survey_id=sid)]
        if len(cands) == 1 and cands[0].member is None:
            return cands[0]  # opening it reports a missing file, naming it; saves a stat
        for loc in cands:
            if self.exists(loc):
                return loc
        archive = cands[0].member is not None and not (self.root / cands[0].path).is_file()
        raise GeoplantError(
            "missing archive" if archive else "missing file",
            path=self.root / cands[0].path if archive else self.describe(cands[0]),
            fix="check the release is complete (re-download or re-extract it)"
            + (f"; also looked for {self.describe(cands[1])}" if len(cands) > 1 else ""),
        )

    def read_climate_cube(self, split: str, survey_id: int) -> np.ndarray:
        """Monthly climate cube of one survey: float32 (4, 19, 12) =
        (pr, tas, tasmax, tasmin) x (2000-2018) x (Jan-Dec)."""
        loc = self._find("climate.cube", split, survey_id)
        return read_pt_cube(self.read_bytes(loc), CLIMATE_SHAPE, name=self.describe(loc))

    def read_landsat_cube(self, split: str, survey_id: int) -> np.ndarray:
        """Landsat cube of one survey: float32 (6, 4, 21) =
        (red, green, blue, nir, swir1, swir2) x (quarter 1-4) x (2000-2020); NaN allowed."""
        loc = self._find("landsat.cube", split, survey_id)
        return read_pt_cube(self.read_bytes(loc), LANDSAT_SHAPE, name=self.describe(loc))

    def read_s2_jpeg(self, split: str, survey_id: int) -> np.ndarray:
        """Sentinel-2 JPEG pair of one survey: uint8 (4, 128, 128) = R, G, B, NIR."""
        rgb = self._find("s2.rgb", split, survey_id)
        nir = self._find("s2.nir", split, survey_id)
        return read_patch_jpeg(self.read_bytes(rgb), self.read_bytes(nir),
                               names=(self.describe(rgb), self.describe(nir)))

    def read_s2_tiff(self, split: str, survey_id: int) -> np.ndarray:
        """Sentinel-2 GeoTIFF patch of one survey: int16 (4, 64, 64) = R, G, B, NIR."""
        loc = self._find("s2.tiff", split, survey_id)
        return read_patch_tiff(self.read_bytes(loc), name=self.describe(loc))

    def _batch(
        self, ids: Iterable[int], one: Callable[[int], np.ndarray], shape: tuple[int, ...],
        dtype: Any, fill: Any, on_error: OnError,
    ) -> Batch:
        if on_error not in ("raise", "skip"):
            raise GeoplantError(f"unknown on_error {on_error!r}", fix="use 'raise' or 'skip'")
        sids = np.asarray(list(ids), dtype=np.int64)
        data = np.empty((len(sids), *shape), dtype=dtype)  # failed rows get `fill` below
        ok = np.zeros(len(sids), dtype=bool)
        errors: dict[int, GeoplantError] = {}
        for i, sid in enumerate(sids.tolist()):
            try:
                data[i] = one(sid)
                ok[i] = True
            except GeoplantError as exc:
                if on_error == "raise":
                    raise
                data[i] = fill
                errors[sid] = exc
        return Batch(sids, data, ok, errors)

    def read_climate_cubes(self, split: str, survey_ids: Sequence[int], *,
                           on_error: OnError = "raise") -> Batch:
        """Climate cubes of many surveys: ``Batch.data`` float32 (n, 4, 19, 12), NaN rows for
        failures when ``on_error="skip"``. Zip handles are reused across the block."""
        return self._batch(survey_ids, lambda s: self.read_climate_cube(split, s),
                           CLIMATE_SHAPE, np.float32, np.nan, on_error)

    def read_landsat_cubes(self, split: str, survey_ids: Sequence[int], *,
                           on_error: OnError = "raise") -> Batch:
        """Landsat cubes of many surveys: ``Batch.data`` float32 (n, 6, 4, 21)."""
        return self._batch(survey_ids, lambda s: self.read_landsat_cube(split, s),
                           LANDSAT_SHAPE, np.float32, np.nan, on_error)

    def read_s2_jpegs(self, split: str, survey_ids: Sequence[int], *,
                      on_error: OnError = "raise") -> Batch:
        """JPEG patch pairs of many surveys: ``Batch.data`` uint8 (n, 4, 128, 128)."""
        return self._batch(survey_ids, lambda s: self.read_s2_jpeg(split, s),
                           JPEG_SHAPE, np.uint8, 0, on_error)

    def read_s2_tiffs(self, split: str, survey_ids: Sequence[int], *,
                      on_error: OnError = "raise") -> Batch:
        """GeoTIFF patches of many surveys: ``Batch.data`` int16 (n, 4, 64, 64), -1 (nodata)
        for failures."""
        return self._batch(survey_ids, lambda s: self.read_s2_tiff(split, s),
                           TIFF_SHAPE, np.int16, -1, on_error)

    # -- rasters ----------------------------------------------------------------------------

    def raster_names(self) -> tuple[str, ...]:
        """Names of the environmental rasters of this layout (e.g. ``bio1``, ``soil_clay``)."""
        return layouts.raster_names(self.layout)

    def raster_path(self, name: str) -> str:
        """GDAL path of a raster (``/vsizip/`` for zip members), after checking it exists."""
        if name not in self.raster_names():
            raise GeoplantError(f"unknown raster {name!r}",
                                fix=f"use one of: {', '.join(self.raster_names())}")
        loc = self.location(f"raster.{name}")
        if not self.exists(loc):
            raise self._missing(loc)
        full = (self.root / loc.path).resolve()
        return str(full) if loc.member is None else f"/vsizip/{full}/{loc.member}"

    def raster(self, name: str, *, chunks: Any = None, masked: bool = True) -> Any:
        """Open an environmental raster as an ``xarray.DataArray`` with its CRS (rioxarray).

        Parameters
        ----------
        name
            One of :meth:`raster_names`.
        chunks
            Passed to ``rioxarray.open_rasterio`` (e.g. ``True`` or ``{"x": 2048, "y": 2048}``
            for a dask-backed array); ``None`` reads lazily without dask.
        masked
            Replace the nodata value with NaN.
        """
        import rioxarray

        gdal_path = self.raster_path(name)
        label = self.describe(self.location(f"raster.{name}"))
        try:
            da = rioxarray.open_rasterio(gdal_path, chunks=chunks, masked=masked)
        except Exception as exc:  # rasterio raises RasterioIOError and CPLE_* variants
            raise GeoplantError(f"cannot open raster ({exc})", path=label,
                                fix="re-download the raster archive") from exc
        if isinstance(da, list) or da.rio.crs is None:
            raise GeoplantError("raster has no CRS (or is not a single GeoTIFF)", path=label,
                                fix="re-download the raster archive")
        da.name = name
        return da

    def raster_read_error(self, name: str, exc: BaseException) -> GeoplantError | None:
        """The error to report when reading raster ``name`` raised ``exc``, or ``None``.

        :meth:`raster` opens lazily: a damaged member of a raster archive only fails when its
        pixels are read (e.g. while a build copies it). Callers that force the read wrap it
        and ask here whether the exception means a damaged raster (rasterio / GDAL errors)
        rather than a problem on the writing side, which they should let through.
        """
        from rasterio._err import CPLE_BaseError
        from rasterio.errors import RasterioError

        if not isinstance(exc, RasterioError | CPLE_BaseError):
            return None
        # rasterio's own message is "see previous exception": GDAL's causes say what failed
        causes: list[str] = []
        cause: BaseException | None = exc
        while cause is not None and len(causes) < 4:
            text = " ".join(str(cause).split())
            if text and "previous exception" not in text:
                causes.append(text)
            cause = cause.__cause__ or cause.__context__
        reason = "; ".join(causes[-2:]) or type(exc).__name__
        return GeoplantError(f"cannot read raster ({reason})",
                             path=self.describe(self.location(f"raster.{name}")),
                             fix="re-download the raster archive")

    # -- consistency ------------------------------------------------------------------------

    def _scan_survey_files(self, family: str, split: str) -> tuple[str, dict[int, int]]:
        """All surveyIds that have a file of a per-survey family (id -> count of files)."""
        probe = 918273645  # digits no template contains; 45/36 folders
        loc = self.location(family, split, survey_id=probe)
        text = loc.member if loc.member is not None else loc.path
        cd, ab = layouts.patch_folders(probe)
        tail = f"{cd}/{ab}/{probe}"
        if tail in text:
            prefix, _, ext = text.partition(tail)
            pattern = re.compile(r"(\d{1,2})/(\d{0,2})/(\d+)" + re.escape(ext))
        else:
            prefix, _, fname = text.rpartition("/")
            prefix += "/" if prefix else ""
            pattern = re.compile(re.escape(fname).replace(str(probe), r"(\d+)"))
        names: Iterable[str]
        if loc.member is not None:
            where = f"{self.root / loc.path}::{prefix}"
            if not (self.root / loc.path).is_file():
                return where, {}
            names = (n[len(prefix):] for n in self._zip(loc.path).namelist()
                     if n.startswith(prefix))
        else:
            base = self.root / prefix
            where = str(base)
            names = (str(Path(d, f).relative_to(base)).replace(os.sep, "/")
                     for d, _, fs in os.walk(base) for f in fs)
        found: dict[int, int] = {}
        for rel in names:
            m = pattern.fullmatch(rel)
            if m is None:
                continue
            sid = int(m.group(m.lastindex or 1))
            if m.lastindex == 3:  # patch: the folders must match the id (sliced or padded)
                folders = (m.group(1), m.group(2))
                if folders not in (layouts.patch_folders(sid),
                                   (f"{sid % 100:02d}", f"{sid // 100 % 100:02d}")):
                    continue
            found[sid] = found.get(sid, 0) + 1
        return where, found

    def check_consistency(self, split: str) -> ConsistencyReport:
        """Cross-check the surveyIds of every predictor file of a split against its metadata.

        Value tables (env, climate and Landsat CSVs) are read for their ``surveyId`` column
        only; per-survey families (cubes, patches) are listed. Each file gets the ids that
        the metadata has but it lacks (``missing``) and the ids it has that the metadata lacks
        (``extra``); an absent file is reported as such. Nothing is raised: call
        :meth:`ConsistencyReport.raise_if_bad` for that.
        """
        split = self._split(split)
        expected = self.survey_ids(split)
        out: list[FileConsistency] = []
        for family in self.families(split):
            if family.startswith("metadata."):
                continue
            if family.endswith(".values") or family.startswith("env."):
                bands: Sequence[str | None] = LANDSAT_BANDS if family == "landsat.values" \
                    else (None,)
                for band in bands:
                    loc = self.location(family, split, band=band)
                    label = self.describe(loc)
                    if not self.exists(loc):
                        out.append(FileConsistency(family, label, 0, expected,
                                                   np.empty(0, np.int64), "file not found"))
                        continue
                    try:
                        ids = read_survey_ids_csv(self._opener(loc), name=label)
                    except GeoplantError as exc:
                        out.append(FileConsistency(family, label, 0, expected,
                                                   np.empty(0, np.int64), exc.problem))
                        continue
                    out.append(self._compare(family, label, expected, ids))
            else:
                label, found = self._scan_survey_files(family, split)
                ids = np.fromiter(found, dtype=np.int64, count=len(found))
                res = self._compare(family, label, expected, ids)
                if not found:
                    res = FileConsistency(family, label, 0, expected, res.extra,
                                          "no files found")
                out.append(res)
        return ConsistencyReport(split, int(expected.size), tuple(out))

    @staticmethod
    def _compare(family: str, label: str, expected: np.ndarray,
                 ids: np.ndarray) -> FileConsistency:
        uniq, counts = np.unique(ids, return_counts=True)
        problem = None
        if (counts > 1).any():
            problem = f"{int((counts > 1).sum())} duplicated surveyId(s), e.g. " \
                      f"{uniq[counts > 1][:3].tolist()}"
        return FileConsistency(family, label, int(uniq.size),
                               np.setdiff1d(expected, uniq, assume_unique=True),
                               np.setdiff1d(uniq, expected, assume_unique=True), problem)
