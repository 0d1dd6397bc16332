"""Readers of the CSV tables: survey metadata (PA train/test, PO) and pre-extracted values
(environmental variables, monthly climate, Landsat bands).

All CSVs go through pyarrow's multi-threaded CSV reader with explicit column types, so a
5M-row PO table loads in seconds, and :func:`iter_metadata_csv` streams it block by block
with flat memory. Structural problems (missing file, missing or duplicated column,
unparseable text) always raise :class:`~geoplant.errors.GeoplantError`. Problems of single
rows (NaN coordinates, a non-integral speciesId, a duplicated surveyId, ±inf where it is not
allowed ...) are collected as :class:`RowProblem` and handled by ``bad_rows``:

``"raise"`` (default)
    raise one GeoplantError naming the file, the number of bad rows and the first few.
``"drop"``
    drop every bad row.
``"keep"``
    keep rows whose only problems are in value columns (e.g. NaN lon/lat) and drop rows whose
    key columns cannot be represented (surveyId, speciesId, year).

Pass a list as ``problems=`` to receive every :class:`RowProblem` (the build writes them to its
manifest); without it, dropped/kept problems are summarised in a warning.

Whatever ``bad_rows`` says, a damaged *file* is never read as if it were whole: a row with the
wrong number of fields, or a file that ends without a newline (a download cut short: its last
line, cut mid-field, may still parse, e.g. surveyId ``864`` for ``8644``), and PA metadata rows
of one survey that disagree on its site (lon, lat, year, ...) each raise one GeoplantError
naming the file, the line and the fix.
"""

from __future__ import annotations

import csv
import io
import os
import re
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Final, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from geoplant.errors import GeoplantError
from geoplant.layouts import (
    CLIMATE_MONTHS,
    CLIMATE_VARIABLES,
    CLIMATE_YEARS,
    ENV_COLUMNS,
    LANDSAT_BANDS,
    LANDSAT_QUARTERS,
    LANDSAT_YEARS,
    PA_TRAIN_COLUMNS,
    PO_COLUMNS,
)

__all__ = [
    "CLIMATE_VALUE_COLUMNS",
    "LANDSAT_VALUE_COLUMNS",
    "BadRows",
    "MetadataKind",
    "RowProblem",
    "climate_cube_from_values",
    "env_columns",
    "iter_metadata_csv",
    "landsat_cube_from_values",
    "read_csv_header",
    "read_metadata_csv",
    "read_survey_ids_csv",
    "read_values_csv",
]

MetadataKind = Literal["pa", "pa_test", "po"]
BadRows = Literal["raise", "drop", "keep"]
Opener = Callable[[], BinaryIO]
CsvSource = str | os.PathLike[str] | Opener

#: ``Bio-<var>_<MM>_<YYYY>`` columns of the monthly climate CSV, in cube order (var, year, month).
CLIMATE_VALUE_COLUMNS: tuple[str, ...] = tuple(
    f"Bio-{v}_{m:02d}_{y}" for v in CLIMATE_VARIABLES for y in CLIMATE_YEARS for m in CLIMATE_MONTHS
)
#: ``YYYY_Q`` columns of one Landsat band CSV, in cube order (quarter, year).
LANDSAT_VALUE_COLUMNS: tuple[str, ...] = tuple(
    f"{y}_{q}" for q in LANDSAT_QUARTERS for y in LANDSAT_YEARS
)

_MAX_LISTED = 5
_INT32_MAX = 2**31 - 1


@dataclass(frozen=True)
class RowProblem:
    """One bad row of a table.

    Attributes
    ----------
    file
        The file (``path`` or ``archive.zip::member``).
    line
        1-based line number in the file (the header is line 1).
    survey_id
        The row's surveyId when it could be read, else None.
    column
        The offending column.
    problem
        What is wrong, e.g. ``"lat is NaN"``.
    action
        ``"dropped"`` or ``"kept"`` (what the reader did with the row).
    """

    file: str
    line: int
    survey_id: int | None
    column: str
    problem: str
    action: str = "dropped"

    def __str__(self) -> str:
        sid = "" if self.survey_id is None else f" (surveyId {self.survey_id})"
        return f"{self.file}:{self.line}{sid}: {self.problem}"


# ----------------------------------------------------------------------------------------------
# sources


def _resolve(source: CsvSource, name: str | None) -> tuple[Opener, str]:
    if callable(source):
        return source, name or "<stream>"
    path = Path(source)

    def opener() -> BinaryIO:
        try:
            return open(path, "rb")  # the caller closes it
        except FileNotFoundError:
            raise GeoplantError(
                "missing file", path=name or path,
                fix="check the release root and layout, and that the download is complete",
            ) from None

    return opener, name or str(path)


def read_csv_header(source: CsvSource, *, name: str | None = None) -> list[str]:
    """Column names of a CSV (first line), BOM and quotes handled."""
    opener, label = _resolve(source, name)
    with opener() as fh:
        first = fh.readline()
    if not first.strip():
        raise GeoplantError("empty file (no header line)", path=label,
                            fix="re-download the file")
    try:
        text = first.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise GeoplantError("header is not UTF-8 text; not a CSV file", path=label) from exc
    cols = next(csv.reader([text.strip("\r\n")]))
    dup = sorted({c for c in cols if cols.count(c) > 1})
    if dup:
        raise GeoplantError(f"duplicated column(s) {dup}", path=label,
                            fix="re-download the file; the header is damaged")
    return cols


def _require(header: Sequence[str], required: Sequence[str], label: str, what: str) -> None:
    missing = [c for c in required if c not in header]
    if missing:
        shown = ", ".join(repr(c) for c in missing[:8]) + (" ..." if len(missing) > 8 else "")
        raise GeoplantError(
            f"{len(missing)} missing column(s) {shown} (a {what} file needs "
            f"{len(required)} columns; found {len(header)})",
            path=label,
            fix="check this is the right file for its family and that it is not truncated",
        )


def _arrow_error(exc: Exception, label: str) -> GeoplantError:
    msg = " ".join(str(exc).split())
    return GeoplantError(
        f"cannot parse CSV: {msg[:300]}", path=label,
        fix="the file is damaged or not of this family; re-download it",
    )


# ----------------------------------------------------------------------------------------------
# whole files: a row with the wrong number of fields, a file cut short

_CUT_FIX = "re-download the file (if it is complete, end its last line with a newline)"


class _Tail(io.RawIOBase):
    """Read-only pass-through stream that keeps its last bytes and counts its newlines."""

    def __init__(self, raw: BinaryIO, keep: int = 1 << 20) -> None:
        super().__init__()
        self._raw, self._keep = raw, keep
        self.tail = b""
        self.newlines = 0

    def readable(self) -> bool:
        return True

    def _note(self, data: bytes) -> None:
        if data:
            self.newlines += data.count(b"\n")
            keep = self._keep
            self.tail = data[-keep:] if len(data) >= keep else (self.tail + data)[-keep:]

    def read(self, size: int | None = -1) -> bytes:
        data = self._raw.read(-1 if size is None else size)
        self._note(data)
        return data

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self._raw.close()
        super().close()


def _scan_tail(opener: Opener) -> _Tail:
    """Read a whole stream for its tail and line count (error paths only)."""
    with opener() as raw:
        tail = _Tail(raw)
        while tail.read(8 << 20):
            pass
    return tail


def _cut_error(tail: _Tail, label: str, n_fields: int) -> GeoplantError | None:
    """The error for a file whose last line has no newline (cut short), else None."""
    if not tail.tail or tail.tail.endswith(b"\n"):
        return None
    line = tail.newlines + 1
    text = tail.tail.rpartition(b"\n")[2].decode("utf-8", errors="replace")
    fields = next(csv.reader([text]), [])
    if len(fields) != n_fields:
        what = f"{len(fields)} of its {n_fields} fields"
    else:
        what = f"all {n_fields} fields, the last one cut short perhaps ({fields[-1]!r})"
    return GeoplantError(
        f"the file ends in the middle of line {line} (no newline; {what}): it is truncated",
        path=label, fix=_CUT_FIX,
    )


def _find_line(opener: Opener, text: str) -> int | None:
    """1-based number of the first line equal to ``text`` (error paths only)."""
    target = text.encode("utf-8")
    with opener() as fh:
        for number, line in enumerate(fh, start=1):
            if line.rstrip(b"\r\n") == target:
                return number
    return None


@dataclass
class _Whole:
    """Checks that a CSV is read whole: every row has the header's number of fields and the
    last line ends with a newline. Give :meth:`open` to arrow and :meth:`on_invalid` as its
    ``invalid_row_handler``; call :meth:`check_rows` after each block and :meth:`check_end`
    at the end."""

    opener: Opener
    label: str
    n_fields: int
    invalid: list[tuple[int, str]] = field(default_factory=list)
    stream: _Tail | None = None

    def open(self) -> _Tail:
        self.stream = _Tail(self.opener())
        return self.stream

    def on_invalid(self, row: Any) -> str:
        if not self.invalid:
            self.invalid.append((int(row.actual_columns), str(row.text)))
        return "skip"  # raised by check_rows with the line number, once arrow returns

    def check_rows(self) -> None:
        if not self.invalid:
            return
        actual, text = self.invalid[0]
        tail = _scan_tail(self.opener)
        cut = _cut_error(tail, self.label, self.n_fields)
        if cut is not None and tail.tail.rpartition(b"\n")[2].decode(
                "utf-8", errors="replace") == text:
            raise cut
        line = _find_line(self.opener, text)
        where = f"line {line}" if line is not None else f"a line ({text[:60]!r})"
        raise GeoplantError(
            f"{where} has {actual} field(s), the header {self.n_fields}: the file is damaged "
            "or cut short", path=self.label,
            fix=f"re-download the file, or repair {where}",
        )

    def check_end(self) -> None:
        assert self.stream is not None
        cut = _cut_error(self.stream, self.label, self.n_fields)
        if cut is not None:
            raise cut

    def arrow_error(self, exc: Exception) -> GeoplantError:
        """A parse error, or the truncation that caused it (a value cut in the last line)."""
        try:
            cut = _cut_error(_scan_tail(self.opener), self.label, self.n_fields)
        except Exception:  # the stream itself is damaged (e.g. a bad zip member): say so
            cut = None
        return cut if cut is not None else _arrow_error(exc, self.label)


def _read_table(
    opener: Opener, label: str, types: Mapping[str, pa.DataType], include: Sequence[str],
    *, n_fields: int, block_size: int | None = None,
) -> pa.Table:
    whole = _Whole(opener, label, n_fields)
    read = pacsv.ReadOptions(use_threads=True, block_size=block_size or (16 << 20))
    parse = pacsv.ParseOptions(invalid_row_handler=whole.on_invalid)
    conv = pacsv.ConvertOptions(
        column_types=dict(types), include_columns=list(include),
        strings_can_be_null=True, quoted_strings_can_be_null=True,
    )
    try:
        with whole.open() as fh:
            table = pacsv.read_csv(fh, read_options=read, parse_options=parse,
                                   convert_options=conv)
    except GeoplantError:
        raise
    except (pa.ArrowInvalid, pa.ArrowKeyError, OSError, ValueError) as exc:
        raise whole.arrow_error(exc) from exc
    whole.check_rows()
    whole.check_end()
    return table


# ----------------------------------------------------------------------------------------------
# row problems


class _Checker:
    """Collects row problems of one block; rows are identified by position in the block."""

    def __init__(self, label: str, first_line: int, sids: np.ndarray | None) -> None:
        self.label = label
        self.first_line = first_line
        self.sids = sids
        self.fatal: np.ndarray | None = None
        self.value: np.ndarray | None = None
        self.items: list[tuple[int, str, str, bool]] = []  # (pos, column, problem, fatal)

    def add(self, mask: np.ndarray, column: str, problem: str, *, fatal: bool) -> None:
        if not mask.any():
            return
        target = "fatal" if fatal else "value"
        cur = getattr(self, target)
        setattr(self, target, mask.copy() if cur is None else (cur | mask))
        self.items.extend((int(i), column, problem, fatal) for i in np.flatnonzero(mask))

    def bad(self, mode: BadRows) -> np.ndarray | None:
        masks = [m for m in (self.fatal, None if mode == "keep" else self.value) if m is not None]
        if not masks:
            return None
        return np.logical_or.reduce(masks)

    def finish(self, mode: BadRows, problems: list[RowProblem] | None) -> list[RowProblem]:
        out = []
        for pos, column, problem, fatal in sorted(self.items):
            sid = None
            if self.sids is not None:
                v = self.sids[pos]
                if np.isfinite(v) and float(v).is_integer():
                    sid = int(v)
            action = "kept" if (mode == "keep" and not fatal) else "dropped"
            out.append(RowProblem(self.label, self.first_line + pos, sid, column, problem,
                                  action))
        if not out:
            return out
        if mode == "raise":
            shown = "; ".join(f"line {p.line}: {p.problem}" for p in out[:_MAX_LISTED])
            more = f" (+{len(out) - _MAX_LISTED} more)" if len(out) > _MAX_LISTED else ""
            raise GeoplantError(
                f"{len(out)} bad row problem(s): {shown}{more}", path=self.label,
                fix="fix or re-download the file, or read it with bad_rows='drop' (or 'keep') "
                "to skip the bad rows and list them",
            )
        if problems is not None:
            problems.extend(out)
        return out


def _warn(label: str, found: list[RowProblem]) -> None:
    if found:
        warnings.warn(
            f"{label}: {len(found)} row problem(s), e.g. {found[0]}; pass problems=[] to get "
            "them all", stacklevel=3,
        )


def _key(arr: np.ndarray, ck: _Checker, column: str, *, lo: float, hi: float) -> np.ndarray:
    """Check a float column that must hold integers in [lo, hi]; flag bad ones as fatal."""
    with np.errstate(invalid="ignore"):
        nan = np.isnan(arr)
        ck.add(nan, column, f"{column} is empty/NaN", fatal=True)
        frac = ~nan & (np.mod(arr, 1) != 0)
        ck.add(frac, column, f"{column} is not an integer", fatal=True)
        rng = ~nan & ~frac & ((arr < lo) | (arr > hi))
        ck.add(rng, column, f"{column} outside [{lo:g}, {hi:g}]", fatal=True)
    return nan | frac | rng


def _small_int(
    arr: np.ndarray, ck: _Checker, column: str, lo: int, hi: int
) -> pd.arrays.IntegerArray:
    """Nullable Int16 column: NaN allowed; non-integral or out-of-range values are value
    problems and become NA."""
    with np.errstate(invalid="ignore"):
        nan = np.isnan(arr)
        bad = ~nan & ((np.mod(arr, 1) != 0) | (arr < lo) | (arr > hi))
    ck.add(bad, column, f"{column} not an integer in [{lo}, {hi}]", fatal=False)
    mask = nan | bad
    return pd.arrays.IntegerArray(np.where(mask, 0, arr).astype(np.int16), mask)


# ----------------------------------------------------------------------------------------------
# metadata


_CATEGORY = pa.dictionary(pa.int32(), pa.string())
#: Optional text columns of the GeoPlant metadata (layouts.PA_EXTRA_COLUMNS, PO_EXTRA_COLUMNS);
#: ``disctrict`` is a spelling the maintainers' own code maps to ``district``.
_OPTIONAL_TEXT: Final = ("taxonRank", "county", "district", "disctrict", "region", "country")
_ALIASES: Final = {"disctrict": "district"}
#: Columns the rows of one PA survey (one row per species) share: a disagreement means two
#: surveys under one id, or a damaged row. Not areaInM2 (nor geoUncertaintyInM): a real GLC24
#: survey (2357522, in shared/real-samples) lists areas 100 and 0.1 on two of its rows.
_SITE_COLUMNS: Final = ("lon", "lat", "year", "region", "country", "county", "district")


def _metadata_types(kind: MetadataKind) -> tuple[dict[str, pa.DataType], tuple[str, ...]]:
    """Arrow types of every known column and the required ones."""
    optional = dict.fromkeys(_OPTIONAL_TEXT, _CATEGORY)
    if kind == "po":
        types = optional | {
            "publisher": _CATEGORY, "year": pa.float64(), "month": pa.float64(),
            "day": pa.float64(), "lat": pa.float64(), "lon": pa.float64(),
            "geoUncertaintyInM": pa.float64(), "taxonRank": _CATEGORY, "date": pa.string(),
            "dayOfYear": pa.float64(), "speciesId": pa.float64(), "surveyId": pa.float64(),
        }
        # The 2024 Seafile copy of the PO table has no publisher column; accept it.
        return types, tuple(c for c in PO_COLUMNS if c != "publisher")
    types = optional | {
        "lon": pa.float64(), "lat": pa.float64(), "year": pa.float64(),
        "geoUncertaintyInM": pa.float64(), "areaInM2": pa.float64(), "region": _CATEGORY,
        "country": _CATEGORY, "speciesId": pa.float64(), "surveyId": pa.float64(),
    }
    required = PA_TRAIN_COLUMNS if kind == "pa" else tuple(
        c for c in PA_TRAIN_COLUMNS if c != "speciesId"
    )
    return types, required


class _SiteCheck:
    """Rows of one PA survey must agree on its site (:data:`_SITE_COLUMNS`), across blocks.

    A disagreement is never a bad row to drop: the two rows may be two surveys under one id
    (a damaged or concatenated file), so it raises whatever ``bad_rows`` says.
    """

    def __init__(self, label: str) -> None:
        self.label = label
        self.seen: pd.DataFrame | None = None  # first row of each survey so far, + "_line"

    def check(self, frame: pd.DataFrame, lines: np.ndarray) -> None:
        """Check rows (with their 1-based line numbers) against each other and earlier ones."""
        cols = [c for c in _SITE_COLUMNS if c in frame.columns]
        site = pd.DataFrame({c: _comparable(frame[c]) for c in cols})
        site["_line"] = lines
        site.index = pd.Index(frame["surveyId"].to_numpy(), name="surveyId")
        first = site[~site.index.duplicated()]
        self._compare(site, first.reindex(site.index), cols)
        if self.seen is None:
            self.seen = first
            return
        known = first.index.isin(self.seen.index)
        self._compare(first[known], self.seen.reindex(first.index[known]), cols)
        self.seen = pd.concat([self.seen, first[~known]])

    def _compare(self, rows: pd.DataFrame, ref: pd.DataFrame, cols: list[str]) -> None:
        differ = np.zeros(len(rows), dtype=bool)
        for c in cols:
            a, b = rows[c].to_numpy(), ref[c].to_numpy()
            with np.errstate(invalid="ignore"):
                differ |= ~((a == b) | (pd.isna(a) & pd.isna(b)))
        if not differ.any():
            return
        lines = rows["_line"].to_numpy()
        i = int(np.flatnonzero(differ)[np.argmin(lines[differ])])
        col = next(c for c in cols if not (rows[c].iloc[i] == ref[c].iloc[i]
                                           or (pd.isna(rows[c].iloc[i])
                                               and pd.isna(ref[c].iloc[i]))))
        raise GeoplantError(
            f"line {lines[i]}: surveyId {rows.index[i]} has {col} {_show(rows[col].iloc[i])} "
            f"but {_show(ref[col].iloc[i])} on line {ref['_line'].iloc[i]} (rows of one survey "
            "must agree on its site): two surveys share an id, or a row is damaged",
            path=self.label, fix="re-download the file, or repair one of the two lines",
        )


def _show(value: object) -> str:
    """A cell for a message: numbers plainly (``2.5``, not ``np.float64(2.5)``), text quoted."""
    if isinstance(value, (int, float, np.integer, np.floating)):
        return f"{value:g}" if isinstance(value, (float, np.floating)) else str(value)
    return "empty" if pd.isna(value) else repr(str(value))


def _comparable(column: pd.Series) -> np.ndarray:
    """Values that compare across blocks (categories differ per block): text as objects."""
    if isinstance(column.dtype, pd.CategoricalDtype):
        return column.astype(object).to_numpy()
    return column.to_numpy()


def _metadata_frame(
    table: pa.Table, kind: MetadataKind, label: str, first_line: int, mode: BadRows,
    problems: list[RowProblem] | None, sites: _SiteCheck | None = None,
) -> pd.DataFrame:
    cols: dict[str, object] = {}
    sids = table["surveyId"].to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
    ck = _Checker(label, first_line, sids)
    _key(sids, ck, "surveyId", lo=0, hi=2**62)
    if "speciesId" in table.column_names:
        spec = table["speciesId"].to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
        _key(spec, ck, "speciesId", lo=0, hi=_INT32_MAX)
    year = table["year"].to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
    _key(year, ck, "year", lo=1900, hi=2100)
    lon = table["lon"].to_numpy(zero_copy_only=False)
    lat = table["lat"].to_numpy(zero_copy_only=False)
    with np.errstate(invalid="ignore"):
        ck.add(np.isnan(lon), "lon", "lon is empty/NaN", fatal=False)
        ck.add(np.isnan(lat), "lat", "lat is empty/NaN", fatal=False)
        ck.add(np.abs(lon) > 180, "lon", "lon outside [-180, 180]", fatal=False)
        ck.add(np.abs(lat) > 90, "lat", "lat outside [-90, 90]", fatal=False)
        geo = table["geoUncertaintyInM"].to_numpy(zero_copy_only=False)
        ck.add(geo < 0, "geoUncertaintyInM", "geoUncertaintyInM is negative", fatal=False)
    for name in table.column_names:
        if name in ("surveyId", "speciesId", "year", "month", "day", "dayOfYear", "date"):
            continue
        col = table[name]
        if pa.types.is_dictionary(col.type):
            cols[name] = col.to_pandas()
        elif pa.types.is_floating(col.type):
            cols[name] = col.to_numpy(zero_copy_only=False)
        else:  # extra columns (e.g. malpolon's 'subset'): arrow's own inference
            cols[name] = col.to_pandas()
    if kind == "po":
        for name, hi in (("month", 12), ("day", 31), ("dayOfYear", 366)):
            arr = table[name].to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
            cols[name] = _small_int(arr, ck, name, 1, hi)
        raw_date = table["date"]
        parsed = pc.strptime(raw_date, format="%Y-%m-%d", unit="s", error_is_null=True)
        bad = (pc.is_valid(raw_date).to_numpy(zero_copy_only=False)
               & ~pc.is_valid(parsed).to_numpy(zero_copy_only=False))
        ck.add(bad, "date", "date is not YYYY-MM-DD", fatal=False)
        cols["date"] = parsed.to_pandas()
    fatal = ck.fatal if ck.fatal is not None else np.zeros(len(sids), dtype=bool)
    cols["year"] = np.where(fatal, 0, year).astype(np.int16)
    if "speciesId" in table.column_names:
        cols["speciesId"] = np.where(fatal, 0, spec).astype(np.int32)
    cols["surveyId"] = np.where(fatal, 0, sids).astype(np.int64)
    order = [c for c in table.column_names if c in cols]
    df = pd.DataFrame({c: cols[c] for c in order}, copy=False)
    df = df.rename(columns={k: v for k, v in _ALIASES.items() if v not in df.columns})
    if kind != "po":
        _survey_rows(df, ck, first_line, sites)
    found = ck.finish(mode, problems)
    bad = ck.bad(mode)
    if bad is not None:
        df = df.loc[~bad].reset_index(drop=True)
    if problems is None:
        _warn(label, found)
    return df


def _survey_rows(df: pd.DataFrame, ck: _Checker, first_line: int,
                 sites: _SiteCheck | None) -> None:
    """PA rows of one survey agree on its site (else raise), and none is a repeat (a problem).

    Rows that already have a problem take no part: a NaN lat is reported as such.
    """
    masks = [m for m in (ck.fatal, ck.value) if m is not None]
    clean = ~np.logical_or.reduce(masks) if masks else np.ones(len(df), dtype=bool)
    lines = first_line + np.arange(len(df))
    if sites is not None:
        sites.check(df.loc[clean], lines[clean])
    key = ["surveyId", "speciesId"] if "speciesId" in df.columns else ["surveyId"]
    repeat = df.duplicated(key).to_numpy() & clean
    what = "species" if len(key) == 2 else "surveyId (one row per survey)"
    ck.add(repeat, "surveyId", f"repeated row (same {what})", fatal=True)


def _metadata_setup(
    source: CsvSource, kind: MetadataKind, name: str | None
) -> tuple[Opener, str, dict[str, pa.DataType], list[str]]:
    if kind not in ("pa", "pa_test", "po"):
        raise GeoplantError(f"unknown metadata kind {kind!r}", fix="use 'pa', 'pa_test' or 'po'")
    opener, label = _resolve(source, name)
    header = read_csv_header(opener, name=label)
    types, required = _metadata_types(kind)
    _require(header, required, label, f"{kind} metadata")
    return opener, label, {c: t for c, t in types.items() if c in header}, list(header)


def read_metadata_csv(
    source: CsvSource,
    kind: MetadataKind,
    *,
    bad_rows: BadRows = "raise",
    problems: list[RowProblem] | None = None,
    name: str | None = None,
) -> pd.DataFrame:
    """Read and validate a metadata CSV (PA train, PA test or PO).

    Columns are matched by name (order differs between files; extra columns such as
    malpolon's ``subset`` or GeoPlant's ``county``/``district`` are kept). Dtypes: ``surveyId``
    int64, ``speciesId`` int32 (parsed from its float text, e.g. ``6310.0``), ``year`` int16,
    ``lon``/``lat``/``geoUncertaintyInM``/``areaInM2`` float64 (``areaInM2`` keeps -inf and NaN
    as they are), ``region``/``country``/``publisher``/``taxonRank``/``county``/``district``
    categorical (``disctrict``, a spelling seen in GeoPlant's code, is renamed ``district``),
    PO ``month``/``day``/``dayOfYear`` nullable Int16 and ``date`` datetime64.

    Parameters
    ----------
    source
        Path of the CSV, or a callable returning a fresh binary stream (a zip member).
    kind
        ``"pa"`` (PA train, speciesId required), ``"pa_test"`` (speciesId optional) or ``"po"``.
    bad_rows, problems
        What to do with bad rows and where to list them (see the module docs). Row checks:
        surveyId/speciesId/year integral and not NaN; lon/lat not NaN and within ±180/±90;
        geoUncertaintyInM not negative; PO month/day/dayOfYear/date valid; PA rows not
        repeated (same survey and species; same survey in a test table).
    name
        Name used in messages (defaults to the path).

    Raises
    ------
    GeoplantError
        Missing file or column, unparseable text, a truncated file or a row with the wrong
        number of fields, PA rows of one survey that disagree on its site (lon, lat, year,
        region, country, county, district), or
        (``bad_rows="raise"``) any bad row.
    """
    opener, label, types, include = _metadata_setup(source, kind, name)
    table = _read_table(opener, label, types, include, n_fields=len(include))
    sites = None if kind == "po" else _SiteCheck(label)
    return _metadata_frame(table, kind, label, 2, bad_rows, problems, sites)


def iter_metadata_csv(
    source: CsvSource,
    kind: MetadataKind,
    *,
    block_bytes: int = 64 << 20,
    bad_rows: BadRows = "raise",
    problems: list[RowProblem] | None = None,
    name: str | None = None,
) -> Iterator[pd.DataFrame]:
    """Stream a metadata CSV as validated DataFrames of about ``block_bytes`` of text each.

    Same dtypes, checks and options as :func:`read_metadata_csv`; memory stays flat (one block
    at a time, plus the next one: a block is yielded once the next is read, so the last one
    comes only after the end of the file was checked), which is how the 5M-row PO table should
    be read when memory is tight. Categorical columns carry per-block categories.
    """
    opener, label, types, include = _metadata_setup(source, kind, name)
    whole = _Whole(opener, label, len(include))
    read = pacsv.ReadOptions(use_threads=True, block_size=block_bytes)
    parse = pacsv.ParseOptions(invalid_row_handler=whole.on_invalid)
    conv = pacsv.ConvertOptions(
        column_types=types, include_columns=include, strings_can_be_null=True,
        quoted_strings_can_be_null=True,
    )
    sites = None if kind == "po" else _SiteCheck(label)
    line = 2
    pending: pa.RecordBatch | None = None
    with whole.open() as fh:
        try:
            reader = pacsv.open_csv(fh, read_options=read, parse_options=parse,
                                    convert_options=conv)
        except (pa.ArrowInvalid, OSError, ValueError) as exc:
            raise whole.arrow_error(exc) from exc
        while True:
            try:
                batch = reader.read_next_batch()
            except StopIteration:
                break
            except (pa.ArrowInvalid, OSError, ValueError) as exc:
                raise whole.arrow_error(exc) from exc
            whole.check_rows()
            if pending is not None:
                yield _metadata_frame(pa.Table.from_batches([pending]), kind, label, line,
                                      bad_rows, problems, sites)
                line += pending.num_rows
            pending = batch
        whole.check_end()
    if pending is not None:
        yield _metadata_frame(pa.Table.from_batches([pending]), kind, label, line, bad_rows,
                              problems, sites)


def read_survey_ids_csv(source: CsvSource, *, name: str | None = None) -> np.ndarray:
    """Only the ``surveyId`` column of any table, as int64 (in file order, duplicates kept).

    The file must be whole (see the module docs), as for every reader here.
    """
    opener, label = _resolve(source, name)
    header = read_csv_header(opener, name=label)
    _require(header, ("surveyId",), label, "GeoPlant")
    table = _read_table(opener, label, {"surveyId": pa.float64()}, ["surveyId"],
                        n_fields=len(header))
    sids = table["surveyId"].to_numpy(zero_copy_only=False)
    ck = _Checker(label, 2, sids)
    _key(sids, ck, "surveyId", lo=0, hi=2**62)
    ck.finish("raise", None)
    return sids.astype(np.int64)


# ----------------------------------------------------------------------------------------------
# value tables


def read_values_csv(
    source: CsvSource,
    columns: Sequence[str] | None,
    *,
    allow_inf: bool = False,
    nonnegative: Sequence[str] = (),
    dtype: np.typing.DTypeLike = np.float32,
    bad_rows: BadRows = "raise",
    problems: list[RowProblem] | None = None,
    name: str | None = None,
) -> pd.DataFrame:
    """Read a pre-extracted value table: ``surveyId`` plus the given value columns.

    Parameters
    ----------
    source
        Path of the CSV, or a callable returning a fresh binary stream.
    columns
        Value columns that must all be present (extra columns are ignored), or None for every
        column of the header but ``surveyId`` (a table whose columns are not documented).
    allow_inf
        Whether ±inf are valid values (true for the human footprint table).
    nonnegative
        Columns whose values cannot be negative (a negative value is a row problem).
    dtype
        dtype of the value columns (float32 by default; NaN = missing is always allowed).
    bad_rows, problems, name
        See :func:`read_metadata_csv`. Row checks: surveyId integral, not NaN, not duplicated
        (key problems); ±inf unless allowed, negatives in ``nonnegative`` (value problems).

    Returns
    -------
    pandas.DataFrame
        ``surveyId`` (int64) then ``columns`` in the given order, rows in file order.
    """
    opener, label = _resolve(source, name)
    header = read_csv_header(opener, name=label)
    if columns is None:
        columns = [c for c in header if c != "surveyId"]
        if not columns:
            raise GeoplantError("no value column after surveyId", path=label,
                                fix="check this is the right file and that it is not damaged")
    _require(header, ("surveyId", *columns), label, "value")
    types = {"surveyId": pa.float64()} | {c: pa.float64() for c in columns}
    table = _read_table(opener, label, types, ["surveyId", *columns], n_fields=len(header))
    sids = table["surveyId"].to_numpy(zero_copy_only=False)
    ck = _Checker(label, 2, sids)
    bad_key = _key(sids, ck, "surveyId", lo=0, hi=2**62)
    ok_ids = pd.Series(np.where(bad_key, np.nan, sids))
    ck.add(ok_ids.duplicated().to_numpy() & ~bad_key, "surveyId", "duplicated surveyId",
           fatal=True)
    values = np.empty((len(sids), len(columns)), dtype=dtype)
    neg = set(nonnegative)
    for j, col in enumerate(columns):
        arr = table[col].to_numpy(zero_copy_only=False)
        if not allow_inf:
            ck.add(np.isinf(arr), col, f"{col} is infinite", fatal=False)
        if col in neg:
            with np.errstate(invalid="ignore"):
                ck.add(arr < 0, col, f"{col} is negative", fatal=False)
        values[:, j] = arr
    found = ck.finish(bad_rows, problems)
    df = pd.DataFrame(values, columns=list(columns), copy=False)
    df.insert(0, "surveyId", np.where(np.isnan(sids), 0, sids).astype(np.int64))
    bad = ck.bad(bad_rows)
    if bad is not None:
        df = df.loc[~bad].reset_index(drop=True)
    if problems is None:
        _warn(label, found)
    return df


_CLIMATE_RE = re.compile(r"Bio-(\w+)_(\d\d)_(\d{4})")


def climate_cube_from_values(frame: pd.DataFrame) -> np.ndarray:
    """Monthly climate values -> float32 array (n, 4, 19, 12) in cube order
    (variable pr/tas/tasmax/tasmin, year 2000-2018, month 1-12); rows as in ``frame``.
    Columns are taken by name, so their order in the file does not matter.
    """
    missing = [c for c in CLIMATE_VALUE_COLUMNS if c not in frame.columns]
    if missing:
        raise GeoplantError(f"{len(missing)} climate column(s) missing, e.g. {missing[0]!r}",
                            fix="read the table with read_climate_values")
    arr = frame[list(CLIMATE_VALUE_COLUMNS)].to_numpy(dtype=np.float32)
    return arr.reshape(len(frame), len(CLIMATE_VARIABLES), len(CLIMATE_YEARS),
                       len(CLIMATE_MONTHS))


def landsat_cube_from_values(frames: Mapping[str, pd.DataFrame]) -> np.ndarray:
    """Six Landsat band tables (same surveyIds, same order) -> float32 array (n, 6, 4, 21) in
    cube order (band red/green/blue/nir/swir1/swir2, quarter 1-4, year 2000-2020).
    """
    first = frames[LANDSAT_BANDS[0]]
    out = np.empty((len(first), len(LANDSAT_BANDS), len(LANDSAT_QUARTERS),
                    len(LANDSAT_YEARS)), dtype=np.float32)
    for b, band in enumerate(LANDSAT_BANDS):
        frame = frames[band]
        if not np.array_equal(frame["surveyId"].to_numpy(), first["surveyId"].to_numpy()):
            raise GeoplantError(
                f"the {band} band table's surveyIds differ from the {LANDSAT_BANDS[0]} one",
                fix="align the tables on surveyId first (RawRelease.landsat_values_cube does)",
            )
        out[:, b] = frame[list(LANDSAT_VALUE_COLUMNS)].to_numpy(dtype=np.float32).reshape(
            len(frame), len(LANDSAT_QUARTERS), len(LANDSAT_YEARS))
    return out


def env_columns(family: str) -> tuple[str, ...]:
    """Value columns of an environmental family (``"soilgrids"`` or ``"env.soilgrids"``)."""
    key = family.removeprefix("env.")
    if key not in ENV_COLUMNS:
        raise GeoplantError(f"unknown environmental family {family!r}",
                            fix=f"use one of: {', '.join(ENV_COLUMNS)}")
    return ENV_COLUMNS[key]
