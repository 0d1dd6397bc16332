"""Kaggle submission files for GeoLifeCLEF 2024: write, read, validate.

The exact competition format (``geoplant-format.md`` §7)::

    surveyId,predictions
    642,12 485 7001
    1792,5 11254

- header exactly ``surveyId,predictions``;
- one row per test survey (4,716 on GLC24), every test surveyId exactly once, no other id;
- ``predictions``: integer speciesIds (0..11254 on GLC24) separated by single spaces, no
  duplicate in a row, any number per row.

Empty rows
----------
A row with no species is *valid* here (it scores F1 = 0 for that survey by the Kaggle
formula, since every test survey has species), but :func:`validate_submission` warns about
it (``UserWarning``): Kaggle reads an empty field as a missing value and may reject the file,
and predicting even one species can only help. :func:`write_submission` writes empty rows as
``<surveyId>,`` and warns too.

Every problem with a file raises :class:`~geoplant.errors.GeoplantError` naming the file,
the line (1-based, the header is line 1) and the fix.
"""

from __future__ import annotations

import csv
import io
import os
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import scipy.sparse as sp
from numpy.typing import ArrayLike

from geoplant.errors import GeoplantError

if TYPE_CHECKING:
    from geoplant.metrics import SetInput

__all__ = [
    "HEADER",
    "MAX_SPECIES_ID",
    "Submission",
    "read_submission",
    "read_test_survey_ids",
    "validate_submission",
    "write_submission",
]

#: The header of a submission (and of a GLC solution file).
HEADER = ("surveyId", "predictions")
#: Largest speciesId of GLC24 (ids are 0..11254).
MAX_SPECIES_ID = 11254


@dataclass(frozen=True)
class Submission:
    """A parsed submission file.

    Attributes
    ----------
    path
        The file.
    survey_ids
        int64, in file order.
    predictions
        One int64 array of species ids per row (file order within the row).
    lines
        int64 line number of each row in the file (the header is line 1).
    warnings
        Non-fatal findings (empty rows), also issued as ``UserWarning``.
    """

    path: str
    survey_ids: np.ndarray
    predictions: list[np.ndarray]
    lines: np.ndarray
    warnings: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.survey_ids)

    def sets_by_survey(self) -> dict[int, np.ndarray]:
        """``{surveyId: species ids}``."""
        return dict(zip(self.survey_ids.tolist(), self.predictions, strict=True))

    def to_indicator(self, survey_ids: Sequence[int] | np.ndarray,
                     n_species: int = MAX_SPECIES_ID + 1) -> sp.csr_matrix:
        """Boolean CSR ``(len(survey_ids), n_species)`` with column = speciesId, rows in the
        order of ``survey_ids`` (surveys absent from the file get empty rows)."""
        by_id = self.sets_by_survey()
        empty = np.zeros(0, np.int64)
        rows = [by_id.get(int(s), empty) for s in survey_ids]
        indptr = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum([len(r) for r in rows], out=indptr[1:])
        cols = np.concatenate([*rows, empty]).astype(np.int64)
        if len(cols) and (cols.min() < 0 or cols.max() >= n_species):
            raise GeoplantError(f"species id {int(cols.max())} outside 0..{n_species - 1}",
                                path=self.path, fix="check the species ids")
        m = sp.csr_matrix((np.ones(len(cols), bool), cols, indptr),
                          shape=(len(rows), n_species))
        m.sort_indices()
        return m


def _fail(path: str, line: int | None, problem: str, fix: str) -> GeoplantError:
    where = f"line {line}: " if line is not None else ""
    return GeoplantError(where + problem, path=path, fix=fix)


def read_submission(path: str | os.PathLike[str], *,
                    max_species_id: int | None = MAX_SPECIES_ID,
                    known_species: Iterable[int] | None = None,
                    warn_empty: bool = True) -> Submission:
    """Read and check the format of a submission (or solution) CSV.

    Checks the header, integer surveyIds, unique surveyIds, integer species ids separated by
    single spaces, no duplicate species in a row, species ids within
    ``0..max_species_id`` (``None``: no bound) and, if given, in ``known_species``.
    It does not check *which* surveys are listed; :func:`validate_submission` does.

    Raises
    ------
    GeoplantError
        On the first problem, naming the file, the line and the fix.
    """
    name = os.fspath(path)
    try:
        raw = Path(name).read_bytes()
    except OSError as err:
        raise GeoplantError(f"cannot read the submission ({err.strerror or err})", path=name,
                            fix="check the path") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise _fail(name, None, "not UTF-8 text", "write the CSV as UTF-8 text") from None
    if text.startswith("\ufeff"):
        raise _fail(name, 1, "starts with a byte-order mark (BOM)",
                    "write UTF-8 without BOM (e.g. pandas to_csv(..., encoding='utf-8'))")
    known = None if known_species is None else {int(s) for s in known_species}
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader, None)
    if header is None or tuple(header) != HEADER:
        got = ",".join(header) if header else "nothing"
        raise _fail(name, 1, f"header is {got!r}, expected 'surveyId,predictions'",
                    "write the header exactly 'surveyId,predictions'")
    survey_ids: list[int] = []
    predictions: list[np.ndarray] = []
    first_line: dict[int, int] = {}  # surveyId -> line, in file order
    empty_lines: list[int] = []
    for row in reader:
        line = reader.line_num
        if not row or (len(row) == 1 and not row[0].strip()):
            continue  # blank line (pandas skips them too)
        if len(row) != 2:
            raise _fail(name, line, f"{len(row)} fields, expected 2 (surveyId,predictions)",
                        "separate species ids by single spaces, not commas; one row per "
                        "survey")
        sid_text, pred_text = row
        try:
            sid = int(sid_text)
        except ValueError:
            raise _fail(name, line, f"surveyId {sid_text!r} is not an integer",
                        "write surveyIds as integers (e.g. .astype(int))") from None
        if sid in first_line:
            raise _fail(name, line, f"surveyId {sid} listed again (first on line "
                        f"{first_line[sid]})", "write one row per survey")
        first_line[sid] = line
        if pred_text == "":
            species = np.zeros(0, np.int64)
            empty_lines.append(line)
        else:
            tokens = pred_text.split(" ")
            if any(t == "" for t in tokens):
                raise _fail(name, line, f"predictions {pred_text!r} are not separated by "
                            "single spaces", "join species ids with one space, no leading or "
                            "trailing space")
            try:
                species = np.array([int(t) for t in tokens], dtype=np.int64)
            except ValueError:
                bad = next(t for t in tokens if not _is_int(t))
                raise _fail(name, line, f"species id {bad!r} is not an integer",
                            "write species ids as integers (e.g. 12, not 12.0)") from None
            if len(np.unique(species)) != len(species):
                values, counts = np.unique(species, return_counts=True)
                raise _fail(name, line, f"species {int(values[counts > 1][0])} listed twice "
                            f"for survey {sid}", "list each species once per survey")
            if species.min() < 0 or (max_species_id is not None and
                                     species.max() > max_species_id):
                bad_id = int(species.min() if species.min() < 0 else species.max())
                raise _fail(name, line, f"species id {bad_id} outside 0.."
                            f"{max_species_id if max_species_id is not None else 'inf'}",
                            "write speciesIds (not column indices or labels)")
            if known is not None:
                unknown = [int(s) for s in species if int(s) not in known]
                if unknown:
                    raise _fail(name, line, f"species id {unknown[0]} is not a known species",
                                "predict only speciesIds of the species list (check the "
                                "column-index -> speciesId mapping)")
        survey_ids.append(sid)
        predictions.append(species)
    notes = []
    if empty_lines:
        notes.append(f"{name}: {len(empty_lines)} row(s) predict no species (first on line "
                     f"{empty_lines[0]}); they score 0 and Kaggle may reject empty values")
        if warn_empty:
            warnings.warn(notes[-1], UserWarning, stacklevel=2)
    return Submission(name, np.asarray(survey_ids, dtype=np.int64), predictions,
                      np.fromiter(first_line.values(), np.int64, len(first_line)), notes)


def _is_int(token: str) -> bool:
    try:
        int(token)
    except ValueError:
        return False
    return True


def validate_submission(path: str | os.PathLike[str],
                        test_survey_ids: ArrayLike, *,
                        max_species_id: int | None = MAX_SPECIES_ID,
                        known_species: Iterable[int] | None = None,
                        warn_empty: bool = True) -> Submission:
    """Validate a submission against the test surveys; return it parsed.

    Everything :func:`read_submission` checks, plus: every test surveyId is present exactly
    once and no other surveyId is listed.

    Raises
    ------
    GeoplantError
        Naming the file, the line (or the missing surveyId) and the fix.
    """
    sub = read_submission(path, max_species_id=max_species_id, known_species=known_species,
                          warn_empty=warn_empty)
    expected = np.asarray(test_survey_ids, dtype=np.int64)
    extra = ~np.isin(sub.survey_ids, expected)
    if np.any(extra):
        i = int(np.argmax(extra))
        raise _fail(sub.path, int(sub.lines[i]), f"surveyId {int(sub.survey_ids[i])} is not "
                    f"a test survey ({int(extra.sum())} such row(s))",
                    "list exactly the surveyIds of the test metadata")
    missing = expected[~np.isin(expected, sub.survey_ids)]
    if len(missing):
        raise _fail(sub.path, None, f"{len(missing)} test survey(s) missing, e.g. surveyId "
                    f"{int(missing[0])}", "write one row for every test survey")
    return sub


def write_submission(path: str | os.PathLike[str], survey_ids: ArrayLike,
                     predictions: SetInput, *,
                     species_ids: ArrayLike | None = None) -> Path:
    """Write a submission CSV in the exact competition format.

    Parameters
    ----------
    path
        CSV to write (parent folders are created).
    survey_ids
        surveyId of each row.
    predictions
        Either a ``(n_surveys, n_species)`` indicator (dense 0/1/bool or scipy sparse, e.g. the
        output of :mod:`geoplant.decode`) whose columns are ``species_ids``, or a sequence of
        iterables of species ids (one per survey).
    species_ids
        Species id of each indicator column (required with an indicator).

    Returns
    -------
    Path
        The file written. Species ids are written in increasing order.
    """
    ids = np.asarray(survey_ids, dtype=np.int64)
    if len(np.unique(ids)) != len(ids):
        raise GeoplantError("survey_ids has duplicates", path=path,
                            fix="pass one row per survey")
    rows: list[np.ndarray]
    if sp.issparse(predictions) or (isinstance(predictions, np.ndarray) and
                                    predictions.ndim == 2):
        if species_ids is None:
            raise GeoplantError("an indicator matrix needs species_ids (one per column)",
                                path=path, fix="pass species_ids=")
        m = sp.csr_matrix(predictions)
        m.eliminate_zeros()
        col_ids = np.asarray(species_ids, dtype=np.int64)
        if m.shape != (len(ids), len(col_ids)):
            raise GeoplantError(f"predictions have shape {m.shape}, expected "
                                f"({len(ids)}, {len(col_ids)})", path=path,
                                fix="pass one row per survey and one column per species")
        rows = [np.sort(col_ids[m.indices[m.indptr[i]: m.indptr[i + 1]]])
                for i in range(m.shape[0])]
    else:
        rows = [np.sort(np.fromiter((int(s) for s in r), np.int64)) for r in predictions]
        if len(rows) != len(ids):
            raise GeoplantError(f"{len(rows)} prediction rows for {len(ids)} surveys",
                                path=path, fix="pass one prediction row per survey")
    for i, r in enumerate(rows):
        if len(r) and (np.any(r[1:] == r[:-1]) or r[0] < 0 or r[-1] > MAX_SPECIES_ID):
            raise GeoplantError(f"row {i} (surveyId {ids[i]}): duplicate or out-of-range "
                                "species id", path=path,
                                fix=f"pass distinct speciesIds in 0..{MAX_SPECIES_ID}")
    n_empty = sum(1 for r in rows if not len(r))
    if n_empty:
        warnings.warn(f"{path}: {n_empty} survey(s) with no predicted species (they score 0;"
                      " Kaggle may reject empty values)", UserWarning, stacklevel=2)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    lines = ["surveyId,predictions"]
    lines += [f"{s},{' '.join(map(str, r.tolist()))}" for s, r in zip(ids.tolist(), rows,
                                                                      strict=True)]
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out


def read_test_survey_ids(metadata_csv: str | os.PathLike[str]) -> np.ndarray:
    """The test surveyIds listed in a test metadata CSV (e.g. ``GLC24_PA_metadata_test.csv``)."""
    try:
        frame = pd.read_csv(metadata_csv, usecols=["surveyId"])
    except (OSError, ValueError) as err:
        raise GeoplantError(f"cannot read surveyIds ({err})", path=metadata_csv,
                            fix="pass the test metadata CSV with a surveyId column") from None
    return np.unique(frame["surveyId"].to_numpy(np.int64))
