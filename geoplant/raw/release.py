"""``RawRelease``: one raw GeoPlant release on disk (``glc24`` or ``geoplant`` layout).

Every path comes from :mod:`geoplant.layouts`; this module finds which form of it is on disk
(the zip as published, or its members extracted by the maintainers' downloader or by ours,
under any of the member names seen), opens files (plain files or members of zip archives,
whose handles are cached and reused) and calls the per-file readers of
:mod:`geoplant.raw.cubes`, :mod:`geoplant.raw.patches` and :mod:`geoplant.raw.tables`.
"""

from __future__ import annotations

import os
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
from geoplant.layouts import LANDSAT_BANDS, LayoutName, Location, MemberRule
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

#: Files whose presence identifies a layout (any one is enough); a geoplant root may be the
#: data folder itself, as the maintainers' downloader writes it (a "bare" root).
_SIGNATURES: dict[LayoutName, tuple[str, ...]] = {
    "glc24": ("GLC24_PA_metadata_train.csv", "GLC24_PA_metadata_test.csv",
              "GLC24_P0_metadata_train.csv"),
    "geoplant": ("GeoPlantData", *layouts.BARE_SIGNATURES),
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
    raise GeoplantError(
        "no GeoPlant release found (looked for GLC24_PA_metadata_train.csv, "
        "GLC24_PA_metadata_test.csv, GLC24_P0_metadata_train.csv, GeoPlantData/ or "
        "PresenceAbsenceSurveys/PA_metadata_*.csv)",
        path=path, fix="pass the root of a glc24 (Kaggle) or geoplant release (the folder "
        "holding GeoPlantData/, or the one the GeoPlant downloader's --data wrote)",
    )


@dataclass
class _Source:
    """Where a split's per-survey files of a family are: a zip, or a folder (``shared``: our
    extraction's folder, which holds other splits' files too). ``index`` maps surveyId to the
    member or relative paths found, built on first need."""

    kind: Literal["zip", "dir"]
    path: str
    shared: bool = False
    index: dict[int, list[str]] | None = None

    def at(self, member: str) -> Location:
        """The location of a member (zip) or relative path (folder) of this source."""
        return Location(self.path, member) if self.kind == "zip" else \
            Location(f"{self.path}/{member}" if self.path else member)


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
        Folder of the release (local path): for ``geoplant``, the folder that holds
        ``GeoPlantData/`` or that data folder itself (what the maintainers' downloader writes
        under ``--data``). Zips may be as published, or extracted by their downloader (into a
        folder named after each zip) or by ``geoplant download --extract`` (into the zip's
        folder); zip members are found under any of the names seen (see
        :func:`geoplant.layouts.member_rule`).
    layout
        ``"glc24"`` or ``"geoplant"``; detected from the files present when omitted.

    Notes
    -----
    Zip archives are opened once and kept open; call :meth:`close` (or use ``with``) to free
    them. Where each family's files were found is cached, so a file added or removed after
    it was first looked for may go unseen (:meth:`check_consistency` lists afresh).
    Instances pickle without their handles and caches, so they can be shipped to dask
    workers.
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
        #: A geoplant root that is the data folder itself: paths have no "GeoPlantData/".
        self.bare = bool(layouts.DATA_ROOT[self.layout]) and \
            not (self.root / layouts.DATA_ROOT[self.layout]).is_dir()
        self._reset()

    def _reset(self) -> None:
        self._zips: dict[str, zipfile.ZipFile] = {}
        self._lock = threading.RLock()
        self._files: dict[tuple[Any, ...], Location] = {}  # resolved single files (hits only)
        self._sources: dict[tuple[str, str], _Source | None] = {}
        self._listings: dict[str, list[str]] = {}
        self._versions: dict[str, str] = {}
        self._rasters: dict[str, Location] | None = None

    # -- plumbing ---------------------------------------------------------------------------

    def __repr__(self) -> str:
        return f"RawRelease({str(self.root)!r}, layout={self.layout!r})"

    def __getstate__(self) -> dict[str, Any]:
        return {"root": self.root, "layout": self.layout, "bare": self.bare}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.root, self.layout, self.bare = state["root"], state["layout"], state["bare"]
        self._reset()

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

    def location(self, family: str, split: str | None = None, *,
                 survey_id: int | None = None, band: str | None = None) -> Location:
        """Where a file of a family is under this root, in the form found on disk.

        The file itself, its zip member, or that member extracted (into a folder named after
        the zip, or into the zip's folder), under any of the member names seen (see
        :func:`geoplant.layouts.member_rule`); env tables in their version found (see
        :meth:`env_version`). A file found nowhere gets the location the layout gives it
        (:func:`geoplant.layouts.location`), for messages.
        """
        if family.startswith("raster."):
            return self._raster_location(family.removeprefix("raster."))
        if family.startswith("env.") and split in self.splits:
            return self._env_location(family, split)
        if survey_id is not None:
            return self._survey_location(family, split, int(survey_id))[0]
        canon = self._canonical(family, split, band=band)
        rule = None
        if family in ("climate.values", "landsat.values") and split is not None:
            rule = layouts.member_rule(self.layout, family, split, band=band)
        return self._find_file(canon, rule) or canon

    def _canonical(self, family: str, split: str | None, **kw: Any) -> Location:
        """The layout's location of a file, as a path under this root."""
        try:
            return self._actual(layouts.location(self.layout, family, split, **kw))
        except KeyError:
            raise GeoplantError(
                f"split {split!r} of layout {self.layout} has no {family!r} files",
                fix=f"families of this split: {', '.join(self.families(split or ''))}"
                if split in self.splits else None,
            ) from None

    def _actual(self, loc: Location) -> Location:
        """A layout location as a path under this root (a bare root has no data folder)."""
        if not self.bare:
            return loc
        prefix = layouts.DATA_ROOT[self.layout] + "/"
        return Location(loc.path.removeprefix(prefix), loc.member)

    def _path(self, path: str) -> str:
        """A layout path (file or folder) as a path under this root."""
        return self._actual(Location(path)).path

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
        if not os.path.isfile(self._full(loc.path)):
            return False
        return loc.member is None or loc.member in self._zip(loc.path).NameToInfo

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

    # -- forms on disk ----------------------------------------------------------------------

    def _isfile(self, path: str) -> bool:
        return os.path.isfile(self._full(path))

    def _isdir(self, path: str) -> bool:
        return os.path.isdir(self._full(path)) if path else True

    def _listing(self, folder: str, *, fresh: bool = False) -> list[str]:
        """Every file below a folder, as sorted paths relative to it (cached)."""
        if fresh or folder not in self._listings:
            base = self._full(folder) if folder else os.fspath(self.root)
            found = []
            for dirpath, dirs, files in os.walk(base):
                dirs.sort()
                rel = os.path.relpath(dirpath, base).replace(os.sep, "/")
                found += [f if rel == "." else f"{rel}/{f}" for f in sorted(files)]
            self._listings[folder] = found
        return self._listings[folder]

    def _containers(self, archive: str) -> list[_Source]:
        """Where a zip's members may be, in the order tried: the zip, the maintainers'
        extraction folder, ours (see :func:`geoplant.layouts.extraction_dirs`)."""
        theirs, ours = layouts.extraction_dirs(archive)
        return [_Source("zip", archive), _Source("dir", theirs), _Source("dir", ours, True)]

    def _find_file(self, canon: Location, rule: MemberRule | None) -> Location | None:
        """The file a canonical location names, in whichever form it is on disk, or None."""
        key = (canon, rule)
        hit = self._files.get(key)
        if hit is None:
            hit = self._search_file(canon, rule)
            if hit is not None:
                self._files[key] = hit
        return hit

    def _search_file(self, canon: Location, rule: MemberRule | None) -> Location | None:
        if canon.member is None:  # a plain file, or one of the names its rule allows
            if self._isfile(canon.path) or rule is None:
                return canon if self._isfile(canon.path) else None
            folder = canon.path.rpartition("/")[0]
            names = [n for n in (os.listdir(self._full(folder)) if self._isdir(folder) else ())
                     if rule.matches(n)]
            return Location(f"{folder}/{min(names)}" if folder else min(names)) \
                if names else None
        for src in self._containers(canon.path):
            exact = src.at(canon.member)
            if src.path and self.exists(exact):
                return exact
            if rule is not None:
                match = [n for n in self._names(src) or () if rule.matches(n)]
                if match:
                    return src.at(match[0])
        return None

    def _names(self, src: _Source) -> list[str] | None:
        """Every member of a zip, or file below a folder; None when it is not there."""
        if src.kind == "zip":
            return self._zip(src.path).namelist() if self._isfile(src.path) else None
        return self._listing(src.path) if src.path and self._isdir(src.path) else None

    def env_version(self, family: str) -> str:
        """Which version of an env family's tables this release has (the same for every
        split): ``"current"``, else an older one whose tables are present (``"legacy"``,
        ``"v1"``; see :func:`geoplant.layouts.env_variants`), else ``"current"``."""
        family = f"env.{family.removeprefix('env.')}"
        if family not in self._versions:
            splits = [s for s in self.splits if family in self.families(s)]
            variants = [v for s in splits for v in layouts.env_variants(self.layout, family, s)]
            versions = list(dict.fromkeys(v for v, _ in variants))
            present = [v for v in versions
                       if any(self._isfile(self._actual(loc).path)
                              for w, loc in variants if w == v)]
            self._versions[family] = present[0] if present else "current"
        return self._versions[family]

    def _env_location(self, family: str, split: str) -> Location:
        variants = layouts.env_variants(self.layout, family, self._split(split))
        version = self.env_version(family)
        mine = [self._actual(loc) for v, loc in variants if v == version]
        for loc in mine:
            if self._isfile(loc.path):
                return loc
        return mine[0] if mine else self._actual(variants[0][1])

    def _survey_source(self, family: str, split: str, *, fresh: bool = False) -> _Source | None:
        """The zip or folder that holds a split's per-survey files of a family (cached)."""
        key = (family, split)
        if fresh or key not in self._sources:
            canon = self._canonical(family, self._split(split), survey_id=1)
            if canon.member is None:  # loose files (glc24): their family folder
                folder = self._path(layouts.source_path(self.layout, family, split))
                cands = [_Source("dir", folder)]
            else:
                cands = self._containers(canon.path)
            self._sources[key] = next(
                (src for src in cands if self._holds(src, family, split, fresh=fresh)), None)
        return self._sources[key]

    def _holds(self, src: _Source, family: str, split: str, *, fresh: bool) -> bool:
        """Whether a candidate source exists (our shared folder: holds some of the files)."""
        if src.kind == "zip":
            return self._isfile(src.path)
        if not src.path or not self._isdir(src.path):
            return False
        return not src.shared or bool(self._index(src, family, split, fresh=fresh))

    def _index(self, src: _Source, family: str, split: str, *,
               fresh: bool = False) -> dict[int, list[str]]:
        """surveyId -> the source's member/relative paths holding a survey's file."""
        if src.index is not None and not fresh:
            return src.index
        with self._lock:
            rule = layouts.member_rule(self.layout, family, split)
            if src.kind == "zip":
                names: list[str] = self._zip(src.path).namelist()
                label = src.path
            elif src.shared:
                names, label = self._shared_names(src.path, split, fresh=fresh), ""
            else:
                names, label = self._listing(src.path, fresh=fresh), src.path
            index: dict[int, list[str]] = {}
            for name in names:
                sid = rule.survey_id(f"{label}/{name}" if label else name)
                if sid is not None:
                    index.setdefault(sid, []).append(name)
            src.index = index
        return index

    def _shared_names(self, folder: str, split: str, *, fresh: bool) -> list[str]:
        """Files of one split in a folder shared by every split (our extraction of several
        zips): those under the entries that carry the split's name, else every file."""
        rule = layouts.split_rule(self.layout, split)
        entries = sorted(os.listdir(self._full(folder) if folder else self.root))
        mine = [e for e in entries if rule.search(e)]
        if not mine:
            return self._listing(folder, fresh=fresh)
        names = []
        for entry in mine:
            sub = f"{folder}/{entry}" if folder else entry
            if self._isdir(sub):
                names += [f"{entry}/{n}" for n in self._listing(sub, fresh=fresh)]
            else:
                names.append(entry)
        return names

    def _survey_location(self, family: str, split: str | None,
                         sid: int) -> tuple[Location, bool]:
        """(location, found) of one survey's file; not found: where it should be."""
        canon = self._canonical(family, split, survey_id=sid)
        assert split is not None
        src = self._survey_source(family, split)
        if src is None:
            return canon, False
        exact = canon if canon.member is None else src.at(canon.member)
        if self.exists(exact):
            return exact, True
        names = self._index(src, family, split).get(sid)
        if names:
            return src.at(names[0]), True
        return exact, False

    def _raster_table(self) -> dict[str, Location]:
        """Raster name -> its layout location; the human footprint in the version found."""
        if self._rasters is None:
            names = layouts.raster_names(self.layout)
            prefix = layouts.FOOTPRINT_PREFIX
            table = {n: self._actual(layouts.location(self.layout, f"raster.{n}"))
                     for n in names}
            base = {n: loc for n, loc in table.items() if not n.startswith(prefix)}
            v1 = {n: loc for n, loc in table.items() if n.startswith(prefix)}
            footprint: dict[str, Location] = v1
            v2 = layouts.FOOTPRINT_V2_ARCHIVE[self.layout]
            if v2 is not None:
                found = self._footprint_v2(self._path(v2))
                if found:
                    footprint = found
                elif not any(self._find_file(loc, self._raster_rule(loc))
                             for loc in v1.values()):
                    # neither version: name the default download (v2) as what is missing
                    footprint = {f"{prefix}v2": Location(self._path(v2))}
            self._rasters = base | footprint
        return self._rasters

    @staticmethod
    def _raster_rule(loc: Location) -> MemberRule:
        return layouts.member_rule("glc24", "raster", member=loc.member or loc.path)

    def _footprint_v2(self, archive: str) -> dict[str, Location]:
        """The GeoTIFFs of the v2 human-footprint archive, in whichever form it is."""
        for src in self._containers(archive):
            names = self._names(src) or ()
            tifs = sorted(n for n in names if n.lower().endswith((".tif", ".tiff")))
            if tifs:
                return {layouts.footprint_v2_name(n): src.at(n) for n in tifs}
        return {}

    def _raster_location(self, name: str) -> Location:
        table = self._raster_table()
        if name not in table:
            raise GeoplantError(f"unknown raster {name!r}",
                                fix=f"use one of: {', '.join(table)}")
        loc = table[name]
        if loc.member is None and self._isfile(loc.path):
            return loc
        return self._find_file(loc, self._raster_rule(loc)) or loc

    def source_paths(self, splits: Iterable[str], wanted: Iterable[str]) -> list[str]:
        """The files, zips and folders under this root that hold some families of some splits,
        in the form found on disk (see :func:`geoplant.layouts.source_paths` for the layout's
        own); paths relative to the root, each listed once, missing ones left out."""
        wanted = set(wanted)
        out: list[str] = []
        for split in splits:
            for family in self.families(split):
                if family not in wanted:
                    continue
                out += self._family_sources(family, split)
        return [p for p in dict.fromkeys(out) if self._isfile(p) or self._isdir(p)]

    def _family_sources(self, family: str, split: str) -> list[str]:
        if family.endswith(".cube") or family.startswith("s2."):
            src = self._survey_source(family, split)
            if src is None or not src.shared:
                return [] if src is None else [src.path]
            tops = {n.split("/", 1)[0] for n in self._shared_names(src.path, split,
                                                                    fresh=False)}
            return [f"{src.path}/{t}" if src.path else t for t in sorted(tops)]
        bands: Sequence[str | None] = LANDSAT_BANDS if family == "landsat.values" else (None,)
        return [self.location(family, split, band=b).path for b in bands]

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
        ``human_footprint``. The table is the version found (:meth:`env_version`); the
        geoplant human-footprint columns are read from its header (v2 is a new product).
        """
        key = family.removeprefix("env.")
        env_columns(key)  # an unknown family is an error here
        cols = layouts.env_value_columns(self.layout, key)
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

    def _find(self, family: str, split: str, sid: int) -> Location:
        """The existing location of a per-survey file (error naming the expected path)."""
        loc, found = self._survey_location(family, self._split(split), sid)
        if found:
            return loc
        if loc.member is not None and self._survey_source(family, split) is None:
            theirs, ours = layouts.extraction_dirs(loc.path)
            raise GeoplantError(
                "missing archive", path=self.root / loc.path,
                fix=f"download this part of the release (or extract it: looked for {theirs}/ "
                f"and {ours or '.'}/ too)",
            )
        raise GeoplantError("missing file", path=self.describe(loc),
                            fix="check the release is complete (re-download or re-extract it)")

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
        """Names of the environmental rasters of this release (e.g. ``bio1``, ``soil_clay``);
        the human footprint's are those of the version present (geoplant: v2 from its
        archive's listing, else v1's ``hfp_*``)."""
        return tuple(self._raster_table())

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
        """All surveyIds that have a file of a per-survey family (id -> count of files),
        listed afresh from the zip or folder that holds them."""
        src = self._survey_source(family, split, fresh=True)
        if src is None:
            canon = self._canonical(family, split, survey_id=1)
            return str(self.root / canon.path), {}
        index = self._index(src, family, split, fresh=True)
        return str(self.root / src.path), {sid: len(names) for sid, names in index.items()}

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
